"""Annotation tables built once from the official JSON files and memory-mapped on later starts.

A cached table lives in `$CMVL_CACHE_DIR/tables/` (default `~/.cache/cmvl`), named by a hash of the reader's
version, its arguments, and the absolute path, size and modification time of every input file: a changed or
replaced file gives a new name, so a stale table is never read. The cache is not written next to the data because
dataset folders are often read-only shared storage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from cmvl.atomic_file import atomic_write


def default_cache_dir() -> Path:
    return Path(os.environ.get("CMVL_CACHE_DIR", Path.home() / ".cache" / "cmvl"))


def _file_identity(path: Path) -> list[Any]:
    if not path.is_file():
        return [str(path), None]
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def cache_key(name: str, inputs: list[Path], params: dict[str, Any]) -> str:
    blob = json.dumps([name, params, [_file_identity(Path(p)) for p in inputs]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_table(name: str, inputs: list[Path], params: dict[str, Any], build: Callable[[], pa.Table]) -> pa.Table:
    """`build()`'s table, from the cache when the inputs are unchanged; written atomically after a build."""
    path = default_cache_dir() / "tables" / f"{name}-{cache_key(name, inputs, params)}.arrow"
    if path.is_file():
        try:  # the mapping stays open as long as the table's buffers live
            return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        except (pa.ArrowInvalid, OSError):
            pass  # unreadable cache entry: rebuild it below
    table = build()
    with atomic_write(path, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    return table

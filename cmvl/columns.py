"""Reading Arrow list columns as flat numpy arrays (no per-row Python objects).

The annotation tables are what the data side hands the tasks: both read them, so this sits beside both (a task
importing `cmvl.data` would make data and tasks import each other)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def list_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [N+1], values [nnz]) of a list column: row i holds `values[offsets[i]:offsets[i+1]]`; a null row
    is empty."""
    column = table.column(name).combine_chunks()
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return offsets - offsets[0], values


def schema_json(table: pa.Table, key: str) -> str | None:
    """A JSON value a reader stored in the table's schema metadata (e.g. the `categories` of an objects table)."""
    metadata = table.schema.metadata or {}
    value = metadata.get(key.encode())
    return value.decode() if value is not None else None

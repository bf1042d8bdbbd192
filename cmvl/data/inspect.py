"""`cmvl data info` and `cmvl data prepare`: what a dataset config reads, and a resized copy of its images."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from cmvl.atomic_file import atomic_write
from cmvl.data.images import load_image
from cmvl.data.sources.base import Source
from cmvl.errors import UserError
from cmvl.progress import track


def read_splits(source: Source) -> list[tuple[str, str, pa.Table | UserError]]:
    """(annotation kind, split, its table or the error that says why it cannot be read) for every split."""
    out = []
    for kind in sorted(source.kinds):
        for split in source.splits:
            try:
                out.append((kind, split, source.table(kind, split)))
            except UserError as err:
                out.append((kind, split, err))
    return out


def split_report(splits: list[tuple[str, str, pa.Table | UserError]]) -> list[dict[str, Any]]:
    """One row per (kind, split): rows, distinct images, annotated rows, answer types; or why not."""
    report = []
    for kind, split, table in splits:
        row: dict[str, Any] = {"kind": kind, "split": split}
        if isinstance(table, UserError):
            report.append({**row, "error": str(table)})
            continue
        row["rows"] = table.num_rows
        row["images"] = len(_distinct_images(table))
        if "answers" in table.column_names:
            row["annotated"] = table.num_rows - table.column("answers").null_count
            row["answer_types"] = dict(Counter(a for a in table.column("answer_type").to_pylist() if a))
        report.append(row)
    return report


def _distinct_images(table: pa.Table) -> list[str]:
    return np.unique(table.column("image").to_numpy(zero_copy_only=False)).tolist()


def format_report(name: str, image_root: Path, report: list[dict[str, Any]]) -> str:
    lines = [f"dataset {name}: images under {image_root}"]
    for row in report:
        head = f"  {row['kind']:<8} {row['split']:<9}"
        if "error" in row:
            lines.append(f"{head} unavailable: {row['error']}")
            continue
        text = f"{head} {row['rows']:>9,} rows  {row['images']:>8,} images"
        if "annotated" in row:
            types = ", ".join(f"{k} {v:,}" for k, v in sorted(row["answer_types"].items()))
            text += f"  {row['annotated']:>9,} annotated" + (f"  ({types})" if types else "")
        lines.append(text)
    return "\n".join(lines)


def _resize_one(job: tuple[str, str, int, int]) -> str:
    src, dst, size, quality = job
    im = load_image(Path(src))  # the decoder training uses: every mode to 8-bit RGB, upright, or one-line refusal
    scale = size / min(im.size)
    if scale < 1:  # never upscale
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
    with atomic_write(dst, "wb") as f:
        im.save(f, format="JPEG", quality=quality)
    return dst


def prepare_images(source: Source, out: Path, *, size: int, quality: int = 90, workers: int = 1) -> dict[str, int]:
    """Write each image with its shorter side cut to `size` px (JPEG) under `out`, at the same relative path.

    Files already in `out` are kept, so an interrupted prepare continues where it stopped; each file is written
    under a temporary name and renamed, so none is ever half-written under its final name.
    """
    if not source.images_on_disk:
        raise UserError(f"dataset={source.name} keeps its images inside the dataset: there are no files to prepare")
    if size < 16:
        raise UserError(f"size={size}: must be at least 16")
    root = source.image_root.resolve()
    out = out.resolve()
    if out == root:
        raise UserError("out= must differ from the dataset's image folder")
    paths = {
        p for _, _, table in read_splits(source) if not isinstance(table, UserError) for p in _distinct_images(table)
    }
    jobs, absolute = [], 0
    for rel in sorted(paths):
        if os.path.isabs(rel):  # rows read from another folder (vqa_v2 + vg): not part of this image root
            absolute += 1
            continue
        dst = out / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(root / rel), str(dst), size, quality))
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
        for _ in track(pool.map(_resize_one, jobs, chunksize=16), total=len(jobs), description="resizing images"):
            pass
    return {"written": len(jobs), "outside_image_root": absolute}


class _Inline:
    """A one-process stand-in for `ProcessPoolExecutor` (workers=1)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, items, chunksize: int = 1):
        return map(fn, items)

"""`cmvl data shards`: any captions dataset written as image-text tar shards in img2dataset's layout (one sample per
caption row: `<key>.jpg`, `<key>.txt`, `<key>.json`), with webdataset's `TarWriter`, and each split's `sizes.json`
(samples per shard, so a run need not count them). The whole output folder appears at once (written in a temporary
folder beside it, then renamed): an interrupted run leaves no half shard."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from cmvl.atomic_file import TEMP_SUFFIX, apply_umask, remove_stale_temps, temp_prefix
from cmvl.data.shards import SIZES_FILE
from cmvl.data.sources.base import Source
from cmvl.errors import DataError

COPIED_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}  # kept as they are on disk
SHARD_NAME = "{:06d}.tar"


def _image_bytes(source: Source, image: str) -> tuple[bytes, str]:
    """The image's encoded bytes and extension: an image file's own bytes where the source has it on disk in a
    format shards carry, else the decoded image saved as JPEG."""
    if source.images_on_disk:
        path = source.image_root / image
        ext = COPIED_SUFFIXES.get(path.suffix.lower())
        if ext and path.is_file():
            return path.read_bytes(), ext
    buffer = io.BytesIO()
    source.open_image(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), "jpg"


def write_split(source: Source, split: str, folder: Path, shard_size: int) -> tuple[int, int]:
    """The split's captions table as shards `folder/000000.tar`, …; (samples, shards) written."""
    from webdataset import TarWriter

    rows = source.table("captions", split).to_pylist()
    if not rows:
        raise DataError(f"dataset '{source.name}' split {split} has no captions to write")
    folder.mkdir(parents=True)
    for start in range(0, len(rows), shard_size):
        with TarWriter(str(folder / SHARD_NAME.format(start // shard_size)), encoder=False) as writer:
            cached: tuple[str, tuple[bytes, str]] | None = None  # the last image: its caption rows often follow
            for i, row in enumerate(rows[start : start + shard_size], start=start):
                if cached is None or cached[0] != row["image"]:
                    cached = (row["image"], _image_bytes(source, row["image"]))
                data, ext = cached[1]
                meta = {k: row[k] for k in ("image_id", "caption_id", "caption")} | {"image": row["image"]}
                writer.write(
                    {
                        "__key__": f"{i:09d}",
                        ext: data,
                        "txt": row["caption"].encode(),
                        "json": json.dumps(meta).encode(),
                    }
                )
    sizes = {
        SHARD_NAME.format(k): len(rows[k * shard_size : (k + 1) * shard_size])
        for k in range(-(-len(rows) // shard_size))
    }
    (folder / SIZES_FILE).write_text(json.dumps(sizes, indent=1))
    return len(rows), len(sizes)


def shard_pattern(folder: Path, shards: int) -> str:
    """The brace pattern naming a split's shards (what `dataset.train` / `dataset.val` take)."""
    if shards == 1:
        return str(folder / SHARD_NAME.format(0))
    return f"{folder}/{{{SHARD_NAME.format(0)[:-4]}..{SHARD_NAME.format(shards - 1)[:-4]}}}.tar"


def write_shards(source: Source, out: Path, *, splits: list[str], shard_size: int) -> dict[str, tuple[int, str]]:
    """Every split of `splits` under `out/<split>/`; split → (samples, shard pattern). `out` must not exist or be
    empty; it appears complete or not at all."""
    unknown = [s for s in splits if s not in source.splits]
    if unknown:
        raise DataError(
            f"splits={','.join(splits)}: dataset '{source.name}' has no split {unknown[0]} "
            f"(it has: {', '.join(source.splits)})"
        )
    if out.exists() and any(out.iterdir()):
        raise DataError(f"out={out} exists and is not empty; choose a new folder")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, target=out.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=TEMP_SUFFIX, dir=out.parent))
    apply_umask(tmp, directory=True)
    written: dict[str, tuple[int, str]] = {}
    try:
        for split in splits:
            samples, shards = write_split(source, split, tmp / split, shard_size)
            written[split] = (samples, shard_pattern(out / split, shards))
        if out.exists():
            out.rmdir()  # empty: replaced by the complete folder
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written

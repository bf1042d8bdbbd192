"""`cmvl index`: a folder of images embedded once by a retrieval checkpoint's image tower, for `cmvl search`.

An index is a folder: `manifest.json` (the checkpoint's path and sha256, the image folder, the shards, the images
that could not be read) and shards `shard-NNNNN.npy` (float32 n×E, L2-normalised embeddings, the rows of `cmvl
eval`'s image embeddings) with `shard-NNNNN.parquet` (each row's path relative to the folder, its size and mtime).
Every shard is written whole under its final name before the manifest lists it (`cmvl.atomic_file`), so a killed
run continues where it stopped: the images of the listed shards are not embedded again, and images added to the
folder since are embedded on the next run. An index belongs to one checkpoint: another one is refused.

    run = cmvl.load_run("best.ckpt")
    report = build_index(run, "photos/", "index/", batch_size=64)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cmvl.atomic_file import atomic_write, remove_stale_temps, write_json_atomic
from cmvl.data.images import build_transform
from cmvl.errors import DataError, UserError
from cmvl.inference.inputs import image_size, open_input_image
from cmvl.log import get_logger
from cmvl.models.tokens import Tokens
from cmvl.progress import track
from cmvl.run import Run
from cmvl.tasks.retrieval import DualEncoderHead, RetrievalTask

log = get_logger(__name__)

MANIFEST = "manifest.json"
INDEX_FORMAT = "cmvl-image-index"
INDEX_VERSION = 1
SHARD_PREFIX = "shard-"


@dataclass
class RetrievalModel:
    """The retrieval part of a restored run (a retrieval run, or a multitask run's retrieval member): its dual
    encoder embeds images and texts as the task does in evaluation (`RetrievalTask._embed`)."""

    run: Run
    task: RetrievalTask
    head: DualEncoderHead

    @property
    def has_matching_head(self) -> bool:
        return self.head.itm is not None

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> tuple[Tokens, torch.Tensor]:
        """uint8 pixels U×3×S×S → the images' tokens (for the matching head) and their U×E embeddings (float32)."""
        tokens = self.run.model.encode_images(pixels.to(self.run.device))
        return tokens, F.normalize(self.head.image_proj(tokens.pooled_mean()).float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[Tokens, torch.Tensor]:
        """Token ids B×L → the texts' tokens and their B×E embeddings (float32)."""
        device = self.run.device
        tokens = self.run.model.encode_texts(input_ids.to(device), attention_mask.to(device))
        return tokens, F.normalize(self.head.text_proj(tokens.pooled_mean()).float(), dim=-1)


def retrieval_model(run: Run) -> RetrievalModel:
    """The run's retrieval part, or one line saying the checkpoint has none."""
    member = next((t for t in run.task.members() if isinstance(t, RetrievalTask)), None)
    if member is None:
        names = ", ".join(t.name for t in run.task.members())
        raise UserError(
            f"ckpt={run.checkpoint.path}: a {names} checkpoint; index and search need a retrieval one "
            "(cmvl train task=retrieval)"
        )
    return RetrievalModel(run=run, task=member, head=run.model.heads[member.name])


def list_images(folder: Path) -> list[str]:
    """The image files under `folder` (any depth, hidden files and folders left out), as sorted POSIX paths relative
    to it: the extensions torchvision's folder datasets read."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS):
                found.append((Path(parent) / name).relative_to(folder).as_posix())
    return sorted(found)


class FolderImages(Dataset):
    """The pixels of `paths` (relative to `root`) as the run's evaluation reads images; an unreadable file gives
    None and its one-line reason instead (it is skipped, not fatal)."""

    def __init__(self, root: Path, paths: list[str], size: int) -> None:
        self.root, self.paths = root, paths
        self.transform = build_transform(image_size=size, train=False)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.transform(open_input_image(self.root / self.paths[i])), None
        except DataError as err:
            return i, None, str(err)


def keep_items(items: list) -> list:
    """A DataLoader collate that keeps a batch's items as they are (unreadable ones have no pixels)."""
    return items


@dataclass
class IndexReport:
    """What one `build_index` call did."""

    out: Path
    images: int  # embeddings in the index now
    embedded: int  # of them, embedded by this call
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"} of the unreadable files


def build_index(
    run: Run,
    images: str | Path,
    out: str | Path,
    *,
    batch_size: int = 64,
    shard_size: int = 1024,
    num_workers: int = 0,
    overwrite: bool = False,
) -> IndexReport:
    """Embeds the images under `images` into the index folder `out`, continuing an index that `run`'s checkpoint
    started there (`overwrite`: start it again). Raises `UserError` (one line) for a checkpoint without retrieval, a
    missing or empty folder, a folder without a readable image, or an index of another checkpoint or folder."""
    retrieval = retrieval_model(run)
    root, out = Path(images).expanduser().resolve(), Path(out).expanduser()
    if not root.is_dir():
        raise DataError(f"images={images}: {'not a folder' if root.exists() else 'no such folder'}")
    paths = list_images(root)
    if not paths:
        raise DataError(f"images={images}: no image files in it (looked for .jpg, .png, .webp, ... at any depth)")
    manifest = _start_manifest(run, root, out, overwrite=overwrite)
    shards = [read_shard_files(out, shard) for shard in manifest["shards"]]
    indexed = {p for files in shards for p in files.column("path").to_pylist()}
    todo = [p for p in paths if p not in indexed]
    gone = len(indexed - set(paths))
    changed = [p for files in shards for p in changed_since_indexed(root, files)]
    stale = [f"{gone} no longer in {root}"] if gone else []
    stale += [f"{len(changed)} changed since they were embedded ({', '.join(changed[:3])})"] if changed else []
    if stale:
        log.warning(f"indexed images: {' and '.join(stale)}; overwrite=true builds the index again")
    if indexed:
        log.info(f"index {out}: {len(indexed)} image(s) already embedded, {len(todo)} to go")
    skipped = _embed_into_shards(retrieval, root, out, todo, manifest, batch_size, shard_size, num_workers)
    count = sum(shard["count"] for shard in manifest["shards"])
    if count == 0:
        raise DataError(
            f"images={images}: none of its {len(paths)} image file(s) could be read ({skipped[0]['reason']})"
        )
    manifest.update(skipped=skipped, complete=True)
    write_json_atomic(out / MANIFEST, manifest)
    return IndexReport(out=out, images=count, embedded=len(todo) - len(skipped), skipped=skipped)


def _start_manifest(run: Run, root: Path, out: Path, *, overwrite: bool) -> dict[str, Any]:
    """The manifest to continue in `out`: the one there if it is this checkpoint's index of `root`, else a new one
    (the old index's files removed with `overwrite`); refuses a folder that holds something else."""
    from cmvl.config.writable import check_writable_dir

    check_writable_dir(out, "out=")
    sha = run.checkpoint.sha256
    fresh = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "checkpoint": {"path": str(run.checkpoint.path.resolve()), "sha256": sha},
        "images": str(root),
        "shards": [],
        "skipped": [],
        "complete": False,
    }
    if out.is_dir() and (out / MANIFEST).exists():
        old = read_manifest(out)
        if overwrite:
            for name in [MANIFEST, *(f"{s['name']}{ext}" for s in old["shards"] for ext in (".npy", ".parquet"))]:
                (out / name).unlink(missing_ok=True)
            return fresh
        if old["checkpoint"]["sha256"] != sha:
            raise UserError(
                f"out={out}: an index of another checkpoint ({old['checkpoint']['path']}, sha256 "
                f"{old['checkpoint']['sha256'][:12]}…; this one is {sha[:12]}…): give another out= or overwrite=true"
            )
        if old["images"] != str(root):
            raise UserError(f"out={out}: an index of images={old['images']}; give another out= or overwrite=true")
        remove_stale_temps(out)  # the half-written shard of a killed run
        return {**old, "checkpoint": fresh["checkpoint"], "complete": False}
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"out={out}: the folder holds files and no index ({MANIFEST}); give a new or empty folder")
    return fresh


def _embed_into_shards(
    retrieval: RetrievalModel,
    root: Path,
    out: Path,
    todo: list[str],
    manifest: dict[str, Any],
    batch_size: int,
    shard_size: int,
    num_workers: int,
) -> list[dict[str, str]]:
    """Embeds `todo` in batches and writes a shard (then the manifest listing it) every `shard_size` readable
    images and at the end; returns the unreadable files."""
    dataset = FolderImages(root, todo, image_size(retrieval.run))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=keep_items)
    skipped: list[dict[str, str]] = []
    rows: list[str] = []
    embeddings: list[np.ndarray] = []
    for batch in track(loader, total=len(loader), description="embedding images"):
        readable = [(i, pixels) for i, pixels, _ in batch if pixels is not None]
        skipped += [{"path": todo[i], "reason": reason} for i, pixels, reason in batch if pixels is None]
        if readable:
            _, emb = retrieval.encode_images(torch.stack([pixels for _, pixels in readable]))
            embeddings.append(emb.cpu().numpy())
            rows += [todo[i] for i, _ in readable]
        while len(rows) >= shard_size:
            rows, embeddings = _flush(root, out, manifest, rows, embeddings, shard_size)
    if rows:
        _flush(root, out, manifest, rows, embeddings, len(rows))
    return skipped


def _flush(
    root: Path, out: Path, manifest: dict[str, Any], rows: list[str], embeddings: list[np.ndarray], count: int
) -> tuple[list[str], list[np.ndarray]]:
    """Writes the first `count` rows as the next shard and lists it in the manifest; returns the rows left."""
    matrix = np.concatenate(embeddings)
    name = f"{SHARD_PREFIX}{len(manifest['shards']):05d}"
    stats = [(root / p).stat() for p in rows[:count]]
    table = pa.table(
        {
            "path": pa.array(rows[:count], pa.string()),
            "bytes": pa.array([s.st_size for s in stats], pa.int64()),
            "mtime_ns": pa.array([s.st_mtime_ns for s in stats], pa.int64()),
        }
    )
    with atomic_write(out / f"{name}.npy", "wb") as f:
        np.save(f, np.ascontiguousarray(matrix[:count], dtype=np.float32), allow_pickle=False)
    with atomic_write(out / f"{name}.parquet", "wb") as f:
        pq.write_table(table, f)
    manifest["shards"].append({"name": name, "count": count})
    write_json_atomic(out / MANIFEST, manifest)
    return rows[count:], [matrix[count:]] if count < len(matrix) else []


def corrupt(index: Path, why: str) -> UserError:
    return UserError(f"index={index}: a corrupt index ({why}); rebuild it with cmvl index ... overwrite=true")


def read_manifest(index: Path) -> dict[str, Any]:
    """The manifest of the index folder `index`, checked for the keys cmvl reads, or one line why not."""
    path = index / MANIFEST
    if not index.is_dir():
        raise UserError(f"index={index}: no such folder (make one with cmvl index ckpt=... images=DIR out={index})")
    if not path.is_file():
        raise UserError(f"index={index}: not a cmvl index (no {MANIFEST}); make one with cmvl index")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise corrupt(index, f"{MANIFEST} is not readable JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise corrupt(index, f"{MANIFEST} is not a {INDEX_FORMAT} manifest")
    if manifest.get("version") != INDEX_VERSION:
        raise UserError(f"index={index}: index version {manifest.get('version')}; this cmvl reads {INDEX_VERSION}")
    try:
        checkpoint, shards = manifest["checkpoint"], manifest["shards"]
        valid = isinstance(checkpoint["sha256"], str) and isinstance(checkpoint["path"], str)
        valid = valid and isinstance(manifest["images"], str) and isinstance(manifest["skipped"], list)
        valid = valid and all(_valid_shard_entry(s) for s in shards)
    except (KeyError, TypeError):
        valid = False
    if not valid:
        raise corrupt(index, f"{MANIFEST} lacks or mistypes checkpoint, images, shards or skipped")
    return manifest


def _valid_shard_entry(shard: Any) -> bool:
    return (
        isinstance(shard, dict)
        and isinstance(shard.get("name"), str)
        and shard["name"].startswith(SHARD_PREFIX)
        and "/" not in shard["name"]
        and isinstance(shard.get("count"), int)
        and shard["count"] > 0
    )


def read_shard_files(index: Path, shard: dict[str, Any]) -> pa.Table:
    """One shard's parquet table (path, bytes, mtime_ns of each row's file), or one line why it cannot be read."""
    try:
        table = pq.read_table(index / f"{shard['name']}.parquet")
    except (OSError, pa.ArrowException) as err:
        raise corrupt(index, f"{shard['name']}.parquet: {str(err).splitlines()[0]}") from None
    types = {name: table.schema.field(name).type for name in table.column_names}
    if types != {"path": pa.string(), "bytes": pa.int64(), "mtime_ns": pa.int64()}:
        raise corrupt(index, f"{shard['name']}.parquet has the columns {types}, not path, bytes and mtime_ns")
    if table.num_rows != shard["count"]:
        raise corrupt(
            index, f"{shard['name']}.parquet holds {table.num_rows} paths, the manifest says {shard['count']}"
        )
    return table


def read_shard_paths(index: Path, shard: dict[str, Any]) -> list[str]:
    """The image paths of one shard, relative to the indexed folder."""
    return read_shard_files(index, shard).column("path").to_pylist()


def changed_since_indexed(root: Path, files: pa.Table) -> list[str]:
    """The indexed files (a shard table's rows) still under `root` whose size or modification time is not what it
    was when they were embedded: their embeddings describe an older picture."""
    changed = []
    for path, size, mtime in zip(*(files.column(c).to_pylist() for c in ("path", "bytes", "mtime_ns")), strict=True):
        try:
            stat = (root / path).stat()
        except OSError:
            continue  # gone: counted apart
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime):
            changed.append(path)
    return changed


def read_shard_embeddings(index: Path, shard: dict[str, Any]) -> np.ndarray:
    """The float32 count×E embeddings of one shard (read without pickles), or one line why not."""
    try:
        matrix = np.load(index / f"{shard['name']}.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise corrupt(index, f"{shard['name']}.npy: {str(err).splitlines()[0]}") from None
    if matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape[0] != shard["count"]:
        raise corrupt(index, f"{shard['name']}.npy is {matrix.dtype} {matrix.shape}, not float32 {shard['count']}×E")
    return matrix

"""A dataset source turns official files on disk into annotation tables (see DESIGN.md, "The flow")."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from cmvl.data.images import load_image
from cmvl.errors import ConfigError, DataError
from cmvl.log import get_logger
from cmvl.metrics.vqa_normalize import normalize_answer

log = get_logger(__name__)
# The `qa` annotation table, shared by every source that has question answering.
QA_SCHEMA = pa.schema(
    [
        ("question_id", pa.int64()),
        ("image_id", pa.int64()),
        ("image", pa.string()),  # image file, relative to the image root
        ("question", pa.string()),
        ("answers", pa.list_(pa.string())),  # the 10 raw human answers; null where the split has no annotations
        ("answer_type", pa.string()),
        ("question_type", pa.string()),
        ("multiple_choice_answer", pa.string()),
    ]
)

# The `regions` annotation table: phrases that describe one box of an image (grounding).
REGIONS_SCHEMA = pa.schema(
    [
        ("region_id", pa.int64()),
        ("image_id", pa.int64()),
        ("image", pa.string()),  # image file, relative to the image root
        ("width", pa.int32()),  # image size in pixels
        ("height", pa.int32()),
        ("phrase", pa.string()),
        ("box", pa.list_(pa.float32(), 4)),  # [x, y, width, height] in pixels
    ]
)

# The `objects` annotation table: one row per image (tagging, detection); labels index the `categories` schema
# metadata (JSON list of names; `category_ids`, where the dataset numbers its categories, their dataset ids).
OBJECTS_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("labels", pa.list_(pa.int32())),  # indices into the schema metadata `categories`, not dataset ids
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),  # [x, y, width, height] in pixels, one per label
        ("iscrowd", pa.list_(pa.bool_())),
        # The object's area in pixels as the dataset states it (COCO: the segment's area, which COCO's evaluation
        # sorts into small / medium / large; without one: the box's), one per label.
        ("area", pa.list_(pa.float32())),
        # A free-text name of each object: "<first attribute> <category>" where the dataset gives attributes
        # (shapes: "red circle"), else the category name (detection's `task.queries=phrases`).
        ("phrases", pa.list_(pa.string())),
    ]
)

ANSWERS_PER_QUESTION = 10  # VQA v2 collects ten human answers per question


def single_answer_annotations(answer: str) -> list[str]:
    """A dataset's one answer (Visual Genome, single-answer `datasets`) as the ten human answers of a `qa` row:
    normalised like a prediction ("Two." → "2", since the official scorer does not process ten identical answers)
    and repeated, so the VQA metric scores an exact answer 1 and anything else 0."""
    return [normalize_answer(answer)] * ANSWERS_PER_QUESTION


def question_type(question: str) -> str:
    """The question's first word, lower case ("what", "how", …): a `question_type` for datasets without one."""
    words = question.strip().lower().split()
    return words[0] if words else ""


def answer_type(answer: str) -> str:
    """VQA's answer types for a normalised answer: yes/no, number or other."""
    if answer in ("yes", "no"):
        return "yes/no"
    return "number" if answer.isdigit() else "other"


class Source(ABC):
    """Reads one dataset. `kinds` lists the annotation tables it provides (`qa`, `captions`, ...): the one statement
    of it, which pre-flight reads to match tasks with datasets (the dataset's YAML does not repeat it)."""

    name: str = "source"
    images_on_disk: bool = True  # image values are files under `image_root` (false: images inside the dataset)
    # True: the training split is streamed (`cmvl.data.streaming`; `train_shards`, `train_counts(kind)`,
    # `shuffle_buffer`, `train_reader(kind)`), and its table holds only a bounded sample for the tokenizer and fit
    streams_training: bool = False
    kinds: frozenset[str] = frozenset()
    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(self, *, split: str = "val") -> None:
        self.split = split  # the split `cmvl eval` scores

    @classmethod
    def splits_for(cls, args: Mapping[str, Any]) -> tuple[str, ...] | None:
        """The split names of this source built from `args` (its resolved config), known before any file is read:
        pre-flight checks `dataset.split` against them, and the constructor sets `splits` from them. None: known
        only once built (e.g. read from a split file)."""
        return cls.splits

    @property
    @abstractmethod
    def image_root(self) -> Path:
        """Folder that the `image` column of every table is relative to."""

    def open_image(self, image: str) -> Image.Image:
        """The RGB image that a table's `image` value names (by default a file relative to `image_root`)."""
        return load_image(self.image_root / image)

    @abstractmethod
    def _read(self, kind: str, split: str) -> pa.Table: ...

    def table(self, kind: str, split: str) -> pa.Table:
        if kind not in self.kinds:
            raise ConfigError(
                f"dataset '{self.name}' has no '{kind}' annotations (it has: {', '.join(sorted(self.kinds))})"
            )
        if split not in self.splits:
            raise ConfigError(f"dataset '{self.name}' has no split '{split}' (choices: {', '.join(self.splits)})")
        return self._read(kind, split)


class FolderSource(Source):
    """A dataset read from an annotation folder (`root`) and an image folder (`images`, default: `root`), whose
    rows for missing image files are skipped or refused by `missing_images`."""

    def __init__(self, *, root: str, images: str | None, split: str, missing_images: str) -> None:
        super().__init__(split=split)
        self.root = Path(root)
        self.images = Path(images) if images else self.root
        for key, folder in (("dataset.root", self.root), ("dataset.images", self.images)):
            if not folder.is_dir():
                raise DataError(f"{key}: folder not found: {folder}")
        self.missing_images = missing_images

    @property
    def image_root(self) -> Path:
        return self.images

    def with_images_present(self, table: pa.Table, what: str, *, absolute_ok: bool = False) -> pa.Table:
        what = f"{self.name} {what}"
        return drop_missing_images(table, self.images, policy=self.missing_images, what=what, absolute_ok=absolute_ok)


MISSING_IMAGE_POLICIES = ("skip", "error")


def drop_missing_images(
    table: pa.Table, image_root: Path, *, policy: str, what: str, absolute_ok: bool = False
) -> pa.Table:
    """Rows whose image file exists under `image_root`; the others are dropped with one line (policy ``skip``)
    or refused with one line naming the first missing file (policy ``error``).

    Each image folder is listed once (one directory read instead of a stat per image), so checking the ~123k
    COCO images of VQA v2 costs about a second.
    """
    if policy not in MISSING_IMAGE_POLICIES:
        raise ConfigError(f"dataset.missing_images={policy}: must be one of {', '.join(MISSING_IMAGE_POLICIES)}")
    images = table.column("image").to_numpy(zero_copy_only=False).astype(str)
    distinct = np.unique(images)
    listings: dict[str, set[str]] = {}
    present = np.zeros(len(distinct), dtype=bool)
    for i, rel in enumerate(distinct):
        path = PurePosixPath(rel)  # annotation files come from elsewhere: no file may reach outside the image folder
        if ".." in path.parts or (path.is_absolute() and not absolute_ok):
            raise DataError(f"{what}: image path '{rel}' points outside the image folder {image_root}; refused")
        folder, _, name = rel.rpartition("/")
        if folder not in listings:
            directory = image_root / folder
            listings[folder] = set(os.listdir(directory)) if directory.is_dir() else set()
        present[i] = name in listings[folder]
    if present.all():
        return table
    missing = distinct[~present]
    if policy == "error" or not present.any():
        raise DataError(
            f"{what}: {len(missing)} of {len(distinct)} images are missing under {image_root}, "
            f"e.g. {missing[0]} (dataset.missing_images=skip drops their rows)"
        )
    keep = np.isin(images, distinct[present])
    log.warning(
        f"{what}: skipping {int((~keep).sum())} of {len(keep)} rows: {len(missing)} of {len(distinct)} images "
        f"are missing under {image_root} (e.g. {missing[0]})"
    )
    return table.filter(pa.array(keep))

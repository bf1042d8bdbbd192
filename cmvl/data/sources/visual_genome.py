"""Visual Genome from its official JSON files: question-answer pairs as a `qa` table, split by image."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from cmvl.data.jsonfile import load_json, require_keys
from cmvl.data.sources.base import QA_SCHEMA, FolderSource, answer_type, question_type, single_answer_annotations
from cmvl.data.table_cache import cached_table
from cmvl.errors import ConfigError, DataError

READER_VERSION = 1  # bump when the tables built here change, so cached tables are rebuilt


def _image_id(record: dict, path: Path) -> int:
    """v1.2/v1.4 files say `image_id`, v1.0 says `id`."""
    for key in ("image_id", "id"):
        if key in record:
            return int(record[key])
    raise DataError(f"{path}: an image record has neither 'image_id' nor 'id'")


def read_image_records(image_data_file: Path) -> tuple[dict[int, str], dict[int, int]]:
    """image id → file relative to the VG root (`VG_100K/…jpg` or `VG_100K_2/…jpg`, from the record's url), and
    image id → COCO image id for the VG images that are also COCO images."""
    records = load_json(image_data_file, what="Visual Genome image_data.json")
    if not isinstance(records, list):
        raise DataError(f"{image_data_file}: expected a list of image records")
    files, coco_ids = {}, {}
    for record in records:
        require_keys(record, ["url"], path=image_data_file, where="an image record")
        folder, name = record["url"].rstrip("/").split("/")[-2:]
        image_id = _image_id(record, image_data_file)
        files[image_id] = f"{folder}/{name}"
        if record.get("coco_id") is not None:
            coco_ids[image_id] = int(record["coco_id"])
    return files, coco_ids


def image_split_share(image_ids: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per image from a hash of (seed, image id): the split of an image never depends on which
    other images are present, so partial downloads and the full set agree."""
    digests = [hashlib.sha1(f"{seed}:{i}".encode()).digest()[:8] for i in image_ids.tolist()]
    return np.array([int.from_bytes(d, "big") for d in digests], dtype=np.float64) / 2.0**64


def read_visual_genome_qa(qa_file: Path, image_files: dict[int, str], keep_image: np.ndarray | None) -> pa.Table:
    """All QA pairs (of the images whose id is in `keep_image`, when given) in the `qa` layout.

    VG has one answer per question: it becomes ten identical normalised answers (`single_answer_annotations`).
    """
    documents = load_json(qa_file, what="Visual Genome question_answers.json")
    if not isinstance(documents, list):
        raise DataError(f"{qa_file}: expected a list of per-image records")
    keep = None if keep_image is None else set(keep_image.tolist())
    columns: dict[str, list] = {name: [] for name in QA_SCHEMA.names}
    for document in documents:
        require_keys(document, ["qas"], path=qa_file, where="an image record")
        for qa in document["qas"]:
            require_keys(qa, ["qa_id", "image_id", "question", "answer"], path=qa_file, where="a question-answer")
            image_id = int(qa["image_id"])
            if keep is not None and image_id not in keep:
                continue
            if image_id not in image_files:
                raise DataError(f"{qa_file}: image {image_id} of qa_id {qa['qa_id']} is not in image_data.json")
            answers = single_answer_annotations(qa["answer"])
            columns["question_id"].append(int(qa["qa_id"]))
            columns["image_id"].append(image_id)
            columns["image"].append(image_files[image_id])
            columns["question"].append(qa["question"])
            columns["answers"].append(answers)
            columns["answer_type"].append(answer_type(answers[0]))
            columns["question_type"].append(question_type(qa["question"]))
            columns["multiple_choice_answer"].append(answers[0])
    return pa.table(columns, schema=QA_SCHEMA)


class VisualGenomeSource(FolderSource):
    """Visual Genome (v1.0/1.2/1.4 key variants). Splits are a seeded image-level partition (`split_fractions`,
    `split_seed`) or a user split file (JSON: split name → list of image ids)."""

    name = "visual_genome"
    kinds = frozenset({"qa"})

    def __init__(
        self,
        *,
        root: str,
        images: str | None = None,
        split: str = "val",
        split_fractions: dict[str, float] | None = None,
        split_seed: int = 0,
        split_file: str | None = None,
        missing_images: str = "skip",
    ) -> None:
        super().__init__(root=root, images=images, split=split, missing_images=missing_images)
        self.split_seed = split_seed
        self.split_file = Path(split_file) if split_file else None
        if self.split_file is not None:
            self.split_ids = {
                str(k): np.asarray(v, dtype=np.int64)
                for k, v in load_json(self.split_file, what="Visual Genome split file").items()
            }
            self.fractions = None
            self.splits = tuple(self.split_ids)
        else:
            self.fractions = {str(k): float(v) for k, v in (split_fractions or {}).items()}
            total = sum(self.fractions.values())
            if not self.fractions or any(v < 0 for v in self.fractions.values()) or abs(total - 1) > 1e-6:
                raise ConfigError(f"dataset.split_fractions={self.fractions}: non-negative shares that sum to 1")
            self.splits = tuple(self.fractions)

    def _split_images(self, split: str, image_ids: np.ndarray) -> np.ndarray:
        if self.fractions is None:
            return self.split_ids[split]
        share = image_split_share(image_ids, self.split_seed)
        names = list(self.fractions)
        bounds = np.cumsum([self.fractions[n] for n in names])
        index = names.index(split)
        low = bounds[index - 1] if index else 0.0
        return image_ids[(share >= low) & (share < bounds[index])]

    def _read(self, kind: str, split: str) -> pa.Table:
        image_data, qa_file = self.root / "image_data.json", self.root / "question_answers.json"

        def build() -> pa.Table:
            image_files, _ = read_image_records(image_data)
            keep = self._split_images(split, np.array(sorted(image_files), dtype=np.int64))
            return read_visual_genome_qa(qa_file, image_files, keep)

        inputs = [image_data, qa_file, *([self.split_file] if self.split_file else [])]
        params = {"split": split, "fractions": self.fractions, "seed": self.split_seed, "version": READER_VERSION}
        table = cached_table("visual_genome_qa", inputs, params, build)
        return self.with_images_present(table, split)

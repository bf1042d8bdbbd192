"""Reader for the official VQA v2 question and annotation files, into a columnar `qa` table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from cmvl.data.jsonfile import load_json, require_keys
from cmvl.data.sources.base import QA_SCHEMA, FolderSource
from cmvl.data.sources.visual_genome import read_image_records, read_visual_genome_qa
from cmvl.data.table_cache import cached_table
from cmvl.errors import ConfigError, DataError


def vqa_v2_files(root: str | Path, subtype: str) -> tuple[Path, Path]:
    """The official file names of one data subtype (e.g. ``val2014``) of VQA v2."""
    root = Path(root)
    return (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json", root / f"v2_mscoco_{subtype}_annotations.json")


# test-dev2015 is a subset of test2015: its questions point at images in the test2015 folder.
IMAGE_SUBTYPE = {"test-dev2015": "test2015"}


def read_vqa_v2(questions_file: str | Path, annotations_file: str | Path | None, *, image_pattern: str) -> pa.Table:
    """Join questions with their annotations (when given) into a `qa` table.

    `image_pattern` maps an image to its file relative to the image root, with the fields ``subtype`` (the
    image folder's subtype: ``test2015`` for test-dev questions) and ``image_id``, e.g.
    ``{subtype}/COCO_{subtype}_{image_id:012d}.jpg`` for the official COCO folders.
    """
    qdoc = load_json(questions_file, what="VQA v2 questions file")
    require_keys(qdoc, ["questions", "data_subtype"], path=questions_file, where="the top level")
    subtype = IMAGE_SUBTYPE.get(qdoc["data_subtype"], qdoc["data_subtype"])
    questions = qdoc["questions"]
    if questions:
        require_keys(questions[0], ["image_id", "question", "question_id"], path=questions_file, where="a question")
    by_qid: dict[int, dict] = {}
    if annotations_file is not None:
        adoc = load_json(annotations_file, what="VQA v2 annotations file")
        require_keys(adoc, ["annotations"], path=annotations_file, where="the top level")
        for ann in adoc["annotations"]:
            require_keys(ann, ["question_id", "answers", "answer_type"], path=annotations_file, where="an annotation")
            by_qid[ann["question_id"]] = ann
    columns: dict[str, list] = {name: [] for name in QA_SCHEMA.names}
    for q in questions:
        ann = by_qid.get(q["question_id"])
        if annotations_file is not None and ann is None:
            continue  # question without annotation in an annotated split: not scoreable
        columns["question_id"].append(q["question_id"])
        columns["image_id"].append(q["image_id"])
        columns["image"].append(image_pattern.format(subtype=subtype, image_id=q["image_id"]))
        columns["question"].append(q["question"])
        columns["answers"].append([a["answer"] for a in ann["answers"]] if ann else None)
        columns["answer_type"].append(ann["answer_type"] if ann else None)
        columns["question_type"].append(ann.get("question_type") if ann else None)
        columns["multiple_choice_answer"].append(ann.get("multiple_choice_answer") if ann else None)
    return pa.table(columns, schema=QA_SCHEMA)


COCO_IMAGE_PATTERN = "{subtype}/COCO_{subtype}_{image_id:012d}.jpg"
ANNOTATED_SPLITS = ("train", "val")  # splits whose annotations must exist; others may be questions only
READER_VERSION = 1  # bump when read_vqa_v2's output changes, so cached tables are rebuilt


class VQAv2Source(FolderSource):
    """VQA v2 from its official files: questions + annotations JSON per subtype, COCO image folders.

    `train_splits` (e.g. ``[train2014, vg]``) trains on several subtypes at once; ``vg`` adds the Visual Genome
    QA pairs of `vg_root`, except those on images that are also in an evaluation split (VG shares ~50k images with
    COCO): they would leak evaluation images into training.
    """

    name = "vqa_v2"
    kinds = frozenset({"qa"})

    def __init__(
        self,
        *,
        root: str,
        images: str | None = None,
        split: str = "val",
        subtypes: dict[str, str] | None = None,
        train_splits: list[str] | None = None,
        vg_root: str | None = None,
        image_pattern: str = COCO_IMAGE_PATTERN,
        missing_images: str = "skip",
    ) -> None:
        super().__init__(root=root, images=images, split=split, missing_images=missing_images)
        self.subtypes = dict(subtypes or {"train": "train2014", "val": "val2014"})
        self.splits = tuple(self.subtypes)
        self.train_splits = list(train_splits or [self.subtypes.get("train", "train2014")])
        self.vg_root = Path(vg_root) if vg_root else None
        self.image_pattern = image_pattern
        if "vg" in self.train_splits and self.vg_root is None:
            raise ConfigError("dataset.vg_root is required when dataset.train_splits has vg")
        if self.vg_root is not None and not self.vg_root.is_dir():
            raise DataError(f"dataset.vg_root: folder not found: {self.vg_root}")

    def _read(self, kind: str, split: str) -> pa.Table:
        if split != "train":
            return self._subtype_table(self.subtypes[split], annotated=split in ANNOTATED_SPLITS)
        parts = [
            self._visual_genome_table() if name == "vg" else self._subtype_table(name, annotated=True)
            for name in self.train_splits
        ]
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _subtype_table(self, subtype: str, *, annotated: bool) -> pa.Table:
        questions, annotations = vqa_v2_files(self.root, subtype)
        if not annotations.is_file():
            if annotated:
                raise DataError(f"VQA v2 annotations file not found: {annotations} ({subtype} needs answers)")
            annotations = None  # test / test-dev: questions only, `cmvl eval` writes the submission file
        inputs = [questions] if annotations is None else [questions, annotations]
        table = cached_table(
            "vqa_v2_qa",
            inputs,
            {"pattern": self.image_pattern, "version": READER_VERSION},
            lambda: read_vqa_v2(questions, annotations, image_pattern=self.image_pattern),
        )
        return self.with_images_present(table, subtype)

    def _visual_genome_table(self) -> pa.Table:
        """VG QA pairs as `qa` rows whose `image` is an absolute path (the images live under `vg_root`)."""
        image_data, qa_file = self.vg_root / "image_data.json", self.vg_root / "question_answers.json"
        evaluation = [vqa_v2_files(self.root, sub)[0] for name, sub in self.subtypes.items() if name != "train"]
        evaluation = [path for path in evaluation if path.is_file()]

        def build() -> pa.Table:
            images = read_image_records(image_data)
            held_out = {q["image_id"] for path in evaluation for q in load_json(path, what="questions")["questions"]}
            keep = np.array(sorted(i for i in images.files if images.coco_ids.get(i) not in held_out), dtype=np.int64)
            absolute = {i: str((self.vg_root / f).resolve()) for i, f in images.files.items()}
            table = read_visual_genome_qa(qa_file, images._replace(files=absolute), keep)
            return table.replace_schema_metadata({"refused_images": str(len(images.files) - len(keep))})

        params = {"version": READER_VERSION, "vg": True}
        table = cached_table("vqa_v2_vg_qa", [image_data, qa_file, *evaluation], params, build)
        refused = int(table.schema.metadata[b"refused_images"])
        if refused:
            print(
                f"cmvl: vqa_v2 train: left out the Visual Genome questions of {refused} images that are also in "
                f"{', '.join(p.name for p in evaluation)}",
                file=sys.stderr,
            )
        return self.with_images_present(table, "train (vg)", absolute_ok=True)  # absolute by construction above

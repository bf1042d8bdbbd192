"""Reader for the official VQA v2 question and annotation files, into a columnar `qa` table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cmvl.data.jsonfile import load_json, optional, records, require_unique, required
from cmvl.data.sources.base import QA_SCHEMA, FolderSource
from cmvl.data.sources.visual_genome import read_image_records, read_visual_genome_qa
from cmvl.data.table_cache import cached_table
from cmvl.errors import ConfigError, DataError
from cmvl.log import get_logger


def vqa_v2_files(root: str | Path, subtype: str) -> tuple[Path, Path]:
    """The official file names of one data subtype (e.g. ``val2014``) of VQA v2."""
    root = Path(root)
    return (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json", root / f"v2_mscoco_{subtype}_annotations.json")


log = get_logger(__name__)
# test-dev2015 is a subset of test2015: its questions point at images in the test2015 folder.
IMAGE_SUBTYPE = {"test-dev2015": "test2015"}
DEFAULT_SUBTYPES = {"train": "train2014", "val": "val2014"}


QUESTION = pa.struct(
    [required("image_id", pa.int64()), required("question", pa.string()), required("question_id", pa.int64())]
)
QUESTIONS_FILE = pa.struct([required("questions", pa.list_(QUESTION)), required("data_subtype", pa.string())])
ANNOTATION = pa.struct(
    [
        required("question_id", pa.int64()),
        required("answers", pa.list_(pa.struct([required("answer", pa.string())]))),
        required("answer_type", pa.string()),
        optional("question_type", pa.string()),
        optional("multiple_choice_answer", pa.string()),
    ]
)
ANNOTATIONS_FILE = pa.struct([required("annotations", pa.list_(ANNOTATION))])


def read_vqa_v2(questions_file: str | Path, annotations_file: str | Path | None, *, image_pattern: str) -> pa.Table:
    """Join questions with their annotations (when given) into a `qa` table.

    `image_pattern` maps an image to its file relative to the image root, with the fields ``subtype`` (the
    image folder's subtype: ``test2015`` for test-dev questions) and ``image_id``, e.g.
    ``{subtype}/COCO_{subtype}_{image_id:012d}.jpg`` for the official COCO folders. Question ids must be unique
    in each file; questions without an annotation are left out with one line (all of them: refused).
    """
    qdoc = load_json(questions_file, what="VQA v2 questions file", layout=QUESTIONS_FILE)
    subtype = IMAGE_SUBTYPE.get(qdoc["data_subtype"], qdoc["data_subtype"])
    questions = records(qdoc["questions"], QUESTION)
    question_ids = questions.field("question_id").to_numpy()
    require_unique(question_ids, path=questions_file, key="question_id")
    if annotations_file is None:
        annotations = pa.nulls(len(questions), ANNOTATION)
    else:
        adoc = load_json(annotations_file, what="VQA v2 annotations file", layout=ANNOTATIONS_FILE)
        annotated = records(adoc["annotations"], ANNOTATION)
        annotation_ids = annotated.field("question_id").to_numpy()
        require_unique(annotation_ids, path=annotations_file, key="question_id")
        position = pc.index_in(pa.array(question_ids), value_set=pa.array(annotation_ids))
        scoreable = position.is_valid()  # a question without annotation in an annotated split cannot be scored
        _report_unannotated(scoreable, questions_file, annotations_file, question_ids)
        questions, annotations = questions.filter(scoreable), annotated.take(position.filter(scoreable))
    image_ids = questions.field("image_id").to_numpy()
    distinct, inverse = np.unique(image_ids, return_inverse=True)  # one file name per image, not per question
    files = np.array([image_pattern.format(subtype=subtype, image_id=int(i)) for i in distinct], dtype=object)
    answers = annotations.field("answers")
    answer_texts = pa.ListArray.from_arrays(answers.offsets, answers.values.field("answer"), mask=answers.is_null())
    columns = {
        "question_id": questions.field("question_id"),
        "image_id": questions.field("image_id"),
        "image": pa.array(files[inverse] if len(files) else [], type=pa.string()),
        "question": questions.field("question"),
        "answers": answer_texts,
        **{name: annotations.field(name) for name in ("answer_type", "question_type", "multiple_choice_answer")},
    }
    return pa.table(columns, schema=QA_SCHEMA)


def _report_unannotated(scoreable: pa.BooleanArray, questions_file, annotations_file, question_ids) -> None:
    kept = pc.sum(scoreable).as_py() or 0
    if kept == len(scoreable):
        return
    example = question_ids[~scoreable.to_numpy(zero_copy_only=False)][0]
    if kept == 0:
        raise DataError(
            f"{annotations_file}: none of the {len(scoreable)} questions of {questions_file} has an annotation "
            f"(e.g. question_id {example}); are they files of the same subtype?"
        )
    log.warning(
        f"{annotations_file}: leaving out {len(scoreable) - kept} of {len(scoreable)} questions that have no "
        f"annotation (e.g. question_id {example})"
    )


COCO_IMAGE_PATTERN = "{subtype}/COCO_{subtype}_{image_id:012d}.jpg"
ANNOTATED_SPLITS = ("train", "val")  # splits whose annotations must exist; others may be questions only
READER_VERSION = 2  # bump when read_vqa_v2's output changes, so cached tables are rebuilt


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
        self.subtypes = dict(subtypes or DEFAULT_SUBTYPES)
        self.splits = self.splits_for({"subtypes": self.subtypes})
        self.train_splits = list(train_splits or [self.subtypes.get("train", "train2014")])
        self.vg_root = Path(vg_root) if vg_root else None
        self.image_pattern = image_pattern
        if "vg" in self.train_splits and self.vg_root is None:
            raise ConfigError("dataset.vg_root is required when dataset.train_splits has vg")
        if self.vg_root is not None and not self.vg_root.is_dir():
            raise DataError(f"dataset.vg_root: folder not found: {self.vg_root}")

    @classmethod
    def splits_for(cls, args: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(args.get("subtypes") or DEFAULT_SUBTYPES)

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
            held_out = {
                q["image_id"]
                for path in evaluation
                for q in load_json(path, what="VQA v2 questions file", layout=QUESTIONS_FILE)["questions"]
            }
            keep = np.array(sorted(i for i in images.files if images.coco_ids.get(i) not in held_out), dtype=np.int64)
            absolute = {i: str((self.vg_root / f).resolve()) for i, f in images.files.items()}
            table = read_visual_genome_qa(qa_file, images._replace(files=absolute), keep)
            return table.replace_schema_metadata({"refused_images": str(len(images.files) - len(keep))})

        params = {"version": READER_VERSION, "vg": True}
        table = cached_table("vqa_v2_vg_qa", [image_data, qa_file, *evaluation], params, build)
        refused = int(table.schema.metadata[b"refused_images"])
        if refused:
            log.info(
                f"vqa_v2 train: left out the Visual Genome questions of {refused} images that are also in "
                f"{', '.join(p.name for p in evaluation)}"
            )
        return self.with_images_present(table, "train (vg)", absolute_ok=True)  # absolute by construction above

"""Any Hugging Face `datasets` dataset as a `qa` or `captions` table, with the user's column names.

Images stay inside the dataset's own (memory-mapped) Arrow files: the table's `image` value is the row of the split
that holds the image, and `open_image` decodes that row's bytes. Rows that carry the same image bytes share one
image id, so image-grouped batching and per-batch image deduplication work as for COCO folders.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from cmvl.data.images import decode_image
from cmvl.data.jsonfile import require_unique
from cmvl.data.sources.base import QA_SCHEMA, Source, answer_type, question_type, single_answer_annotations
from cmvl.data.sources.coco import CAPTIONS_SCHEMA
from cmvl.data.table_cache import cached_table
from cmvl.errors import ConfigError, DataError

READER_VERSION = 1  # bump when the tables built here change, so cached tables are rebuilt
DEFAULT_SPLIT_NAMES = {"train": "train", "val": "validation"}  # cmvl split -> the dataset's split name
DEFAULT_COLUMNS = {
    "image": "image",  # an `Image` feature (bytes or a path) or a path string
    "question": "question",
    "answers": "answers",  # a list of answer strings (VQA: 10 human answers) or one answer string
    "question_id": None,  # null: the row number
    "image_id": None,  # null: images with identical bytes share an id
    "answer_type": None,  # null: yes/no, number or other from the answer
    "caption": "caption",  # for the captions table: one caption string or a list of them
}


def load_hf_dataset(path: str) -> Any:
    """A `DatasetDict` from a `save_to_disk` folder, a local folder of parquet/json/csv/image files (the builder is
    inferred), or a hub name (the only case that touches the network)."""
    import datasets

    folder = Path(path)
    try:
        if (folder / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(folder))
        return datasets.load_dataset(str(folder) if folder.is_dir() else path)
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise DataError(f"dataset.path={path}: cannot load it with `datasets` ({str(err).splitlines()[0]})") from None


class HFSource(Source):
    """`path` as in `load_hf_dataset`; `split_names` maps cmvl's split names to the dataset's; `columns` maps the
    table fields to the dataset's column names."""

    name = "hf"
    kinds = frozenset({"qa", "captions"})
    images_on_disk = False

    def __init__(
        self,
        *,
        path: str,
        split: str = "val",
        split_names: dict[str, str] | None = None,
        columns: dict[str, str | None] | None = None,
    ) -> None:
        super().__init__(split=split)
        self.path = path
        self.split_names = dict(split_names or DEFAULT_SPLIT_NAMES)
        self.splits = self.splits_for({"split_names": self.split_names})
        unknown = set(columns or {}) - set(DEFAULT_COLUMNS)
        if unknown:
            raise ConfigError(f"dataset.columns: unknown field(s) {sorted(unknown)} (fields: {list(DEFAULT_COLUMNS)})")
        self.columns = {**DEFAULT_COLUMNS, **(columns or {})}
        self.data = load_hf_dataset(path)
        missing = [name for name in self.split_names.values() if name not in self.data]
        if missing:
            raise DataError(f"dataset.path={path}: no split {missing} (it has: {', '.join(self.data)})")
        self._images: dict[str, Any] = {}  # cmvl split -> that split's image column, raw (undecoded)

    @classmethod
    def splits_for(cls, args: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(args.get("split_names") or DEFAULT_SPLIT_NAMES)

    @property
    def image_root(self) -> Path:
        return Path(self.path)

    def _column_name(self, split: str, field: str) -> str:
        name = self.columns[field]
        if name not in self._names(split):
            raise DataError(
                f"dataset.columns.{field}={name}: no such column in split '{self.split_names[split]}' "
                f"(columns: {', '.join(self._names(split))})"
            )
        return name

    def _column(self, split: str, field: str) -> list | None:
        if self.columns[field] is None:
            return None
        return self.data[self.split_names[split]][self._column_name(split, field)]

    def _raw_images(self, split: str) -> Any:
        if split not in self._images:
            import datasets

            table = self.data[self.split_names[split]]
            name = self._column_name(split, "image")
            if isinstance(table.features[name], datasets.Image):
                table = table.cast_column(name, datasets.Image(decode=False))
            self._images[split] = table.select_columns([name])
        return self._images[split]

    def _image_keys(self, split: str) -> tuple[list[str], list[int]]:
        """Per row: the image key (`<split>:<first row with these image bytes>`) and an image id."""
        images = self._raw_images(split)
        name = self.columns["image"]
        given_ids = self._column(split, "image_id")
        first_row: dict[Any, int] = {}
        keys, ids = [], []
        values = (value for batch in images.iter(batch_size=256) for value in batch[name])  # not all bytes at once
        for row, value in enumerate(values):
            identity = given_ids[row] if given_ids is not None else _image_digest(value)
            first = first_row.setdefault(identity, row)
            keys.append(f"{split}:{first}")
            ids.append(int(given_ids[row]) if given_ids is not None else first)
        return keys, ids

    def open_image(self, image: str) -> Image.Image:
        split, _, row = image.partition(":")
        value = self._raw_images(split)[int(row)][self.columns["image"]]
        if isinstance(value, dict):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        else:
            source = value
        name = f"{self.path} split {split} row {row}"
        if not isinstance(source, (str, io.BytesIO)):
            raise DataError(f"unreadable image: {name} (neither image bytes nor a path: {type(source).__name__})")
        return decode_image(source, name=name)

    def _read(self, kind: str, split: str) -> pa.Table:
        dataset = self.data[self.split_names[split]]
        params = {"kind": kind, "split": split, "columns": self.columns, "fingerprint": dataset._fingerprint}
        return cached_table("hf", [], {**params, "version": READER_VERSION}, lambda: self._build(kind, split))

    def _build(self, kind: str, split: str) -> pa.Table:
        keys, image_ids = self._image_keys(split)
        if kind == "captions":
            captions = self._column(split, "caption")
            columns: dict[str, list] = {name: [] for name in CAPTIONS_SCHEMA.names}
            for row, value in enumerate(captions):
                for caption in [value] if isinstance(value, str) else value:
                    columns["image_id"].append(image_ids[row])
                    columns["image"].append(keys[row])
                    columns["caption_id"].append(len(columns["caption_id"]))
                    columns["caption"].append(caption.strip())
            return pa.table(columns, schema=CAPTIONS_SCHEMA)
        questions = self._column(split, "question")
        answers = self._column(split, "answers") if self.columns["answers"] in self._names(split) else None
        qids, types = self._question_ids(split), self._column(split, "answer_type")
        columns = {name: [] for name in QA_SCHEMA.names}
        for row, question in enumerate(questions):
            human = _answer_list(answers[row]) if answers is not None else None
            majority = max(set(human), key=human.count) if human else None
            columns["question_id"].append(int(qids[row]) if qids is not None else row)
            columns["image_id"].append(image_ids[row])
            columns["image"].append(keys[row])
            columns["question"].append(question)
            columns["answers"].append(human)
            columns["answer_type"].append(
                types[row] if types is not None else (answer_type(majority) if human else None)
            )
            columns["question_type"].append(question_type(question))
            columns["multiple_choice_answer"].append(majority)
        return pa.table(columns, schema=QA_SCHEMA)

    def _question_ids(self, split: str) -> np.ndarray | None:
        """The `question_id` column as integers, each once (results are written per question id)."""
        values = self._column(split, "question_id")
        if values is None:
            return None
        where = f"{self.path} split {self.split_names[split]} column {self.columns['question_id']}"
        try:
            ids = np.asarray(list(values)).astype(np.int64, casting="safe" if len(values) else "unsafe")
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: question ids must be integers ({err})") from None
        require_unique(ids, path=where, key="question_id")
        return ids

    def _names(self, split: str) -> list[str]:
        return self.data[self.split_names[split]].column_names


def _image_digest(value: Any) -> str:
    if isinstance(value, dict):
        if value.get("bytes"):
            return hashlib.sha1(value["bytes"]).hexdigest()
        return f"path:{value.get('path')}"
    return f"path:{value}"


def _answer_list(value: Any) -> list[str] | None:
    """Ten human answers as given, or one answer as `single_answer_annotations`; dict-shaped answers
    (`[{"answer": ...}]`, the official layout) are read too."""
    if value is None:
        return None
    if isinstance(value, str):
        return single_answer_annotations(value)
    answers = [a["answer"] if isinstance(a, dict) else a for a in value]
    if len(answers) == 1:
        return single_answer_annotations(answers[0])
    return answers or None

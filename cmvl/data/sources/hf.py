"""Any Hugging Face `datasets` dataset as a `qa` or `captions` table, with the user's column names.

Images stay inside the dataset's own (memory-mapped) Arrow files: the table's `image` value is the row of the split
that holds the image, and `open_image` decodes that row's bytes. Rows that carry the same image bytes share one
image id, so image-grouped batching and per-batch image deduplication work as for COCO folders.

With `streaming=true` the training split is streamed from its files (`cmvl.data.sources.hf_stream`) and never built
as a table: its table is its first `vocabulary_samples` rows without images, all that a tokenizer built for the run
and the task's `fit` see. The evaluation splits stay tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from cmvl.data.jsonfile import require_unique
from cmvl.data.sources.base import QA_SCHEMA, Source
from cmvl.data.sources.coco import CAPTIONS_SCHEMA
from cmvl.data.sources.hf_stream import (
    FIELDS,
    HFPieces,
    caption_list,
    data_files,
    file_columns,
    file_pieces,
    image_digest,
    open_image_value,
    qa_row,
    read_piece,
    split_files,
)
from cmvl.data.streaming import check_stream_settings
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


def load_hf_dataset(path: str, splits: list[str] | None = None) -> Any:
    """A `DatasetDict` from a `save_to_disk` folder, a local folder of parquet/json/csv/image files (the builder is
    inferred), or a hub name (the only case that touches the network); `splits` (a local folder only): just these
    splits of it, the others not read."""
    import datasets

    folder = Path(path)
    try:
        if splits is not None:
            if (folder / "dataset_dict.json").is_file():
                return datasets.DatasetDict({name: datasets.load_from_disk(str(folder / name)) for name in splits})
            return datasets.load_dataset(str(folder), data_files={name: data_files(path, name) for name in splits})
        if (folder / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(folder))
        return datasets.load_dataset(str(folder) if folder.is_dir() else path)
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise DataError(f"dataset.path={path}: cannot load it with `datasets` ({str(err).splitlines()[0]})") from None


class HFSource(Source):
    """`path` as in `load_hf_dataset`; `split_names` maps cmvl's split names to the dataset's; `columns` maps the
    table fields to the dataset's column names. `streaming`: stream the training split (a local folder's Arrow or
    Parquet files) through a buffer of `shuffle_buffer` samples per loader worker."""

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
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        vocabulary_samples: int = 20000,
    ) -> None:
        super().__init__(split=split)
        if not isinstance(streaming, bool):
            raise ConfigError(f"dataset.streaming={streaming}: must be true or false")
        check_stream_settings(shuffle_buffer, vocabulary_samples)
        self.streams_training = streaming
        self.shuffle_buffer, self.vocabulary_samples = shuffle_buffer, vocabulary_samples
        self.path = path
        self.split_names = dict(split_names or DEFAULT_SPLIT_NAMES)
        self.splits = self.splits_for({"split_names": self.split_names})
        unknown = set(columns or {}) - set(DEFAULT_COLUMNS)
        if unknown:
            raise ConfigError(f"dataset.columns: unknown field(s) {sorted(unknown)} (fields: {list(DEFAULT_COLUMNS)})")
        self.columns = {**DEFAULT_COLUMNS, **(columns or {})}
        if streaming and "train" not in self.split_names:
            raise ConfigError("dataset.streaming=true streams the train split; dataset.split_names has none")
        self.train_files = split_files(path, self.split_names["train"]) if streaming else []
        if streaming:
            self._column_name("train", "image")  # every streamed sample needs it: refused before anything runs
        self.data = load_hf_dataset(path, splits=self._table_splits() if streaming else None)
        missing = [name for name in self._table_splits() if name not in self.data]
        if missing:
            raise DataError(f"dataset.path={path}: no split {missing} (it has: {', '.join(self.data)})")
        self._images: dict[str, Any] = {}  # cmvl split -> that split's image column, raw (undecoded)
        self._pieces: list[tuple[str, int]] | None = None
        self._counts: dict[str, list[int]] = {}  # kind -> samples per piece
        self._readers: dict[str, HFPieces] = {}
        self._vocabulary: Any = None  # a streamed split's first rows

    @classmethod
    def splits_for(cls, args: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(args.get("split_names") or DEFAULT_SPLIT_NAMES)

    @property
    def image_root(self) -> Path:
        return Path(self.path)

    def _streamed(self, split: str) -> bool:
        return self.streams_training and split == "train"

    def _table_splits(self) -> list[str]:
        """The dataset's splits that are read as tables (all but a streamed training split)."""
        return [name for split, name in self.split_names.items() if not self._streamed(split)]

    # The streamed training split (`cmvl.data.streaming`): its pieces, samples per piece, and how to read them.
    def _train_pieces(self) -> list[tuple[str, int]]:
        if self._pieces is None:
            self._pieces = [piece for file in self.train_files for piece in file_pieces(file) if piece[1]]
            if not self._pieces:
                raise DataError(f"dataset.path={self.path}: split '{self.split_names['train']}' holds no rows")
        return self._pieces

    @property
    def train_shards(self) -> list[str]:
        return [piece for piece, _ in self._train_pieces()]

    def train_reader(self, kind: str) -> HFPieces:
        """The stream's reader of `kind` samples; a column it needs that the files lack is refused in one line."""
        if kind not in self._readers:
            needed = [field for field in FIELDS[kind] if self.columns[field] is not None]
            for field in needed:
                self._column_name("train", field)
            reader = HFPieces(kind, {field: self.columns[field] for field in needed}, self._train_pieces())
            self._counts[kind] = (
                reader.count_captions(self.train_shards) if kind == "captions" else [n for _, n in self._train_pieces()]
            )
            self._readers[kind] = reader
        return self._readers[kind]

    def train_counts(self, kind: str) -> list[int]:
        """Samples per piece: rows (`qa`) or captions (`captions`)."""
        self.train_reader(kind)
        return self._counts[kind]

    def _vocabulary_rows(self) -> Any:
        """The streamed split's first `vocabulary_samples` rows, without the image column (a small `Dataset`)."""
        import datasets

        names = [n for f, n in self.columns.items() if f != "image" and n in self._names("train")]
        tables, rows = [], 0
        for piece, count in self._train_pieces():
            if rows >= self.vocabulary_samples:
                break
            tables.append(read_piece(piece, list(dict.fromkeys(names))))
            rows += count
        table = pa.concat_tables(tables).slice(0, self.vocabulary_samples)
        return datasets.Dataset(datasets.table.InMemoryTable(table))

    def _split_data(self, split: str) -> Any:
        if self._streamed(split):
            if self._vocabulary is None:
                self._vocabulary = self._vocabulary_rows()
            return self._vocabulary
        return self.data[self.split_names[split]]

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
        return self._split_data(split)[self._column_name(split, field)]

    def _raw_images(self, split: str) -> Any:
        if self._streamed(split):
            raise DataError("dataset.streaming=true: the training split's images are read by the training stream only")
        if split not in self._images:
            import datasets

            table = self.data[self.split_names[split]]
            name = self._column_name(split, "image")
            if isinstance(table.features[name], datasets.Image):
                table = table.cast_column(name, datasets.Image(decode=False))
            self._images[split] = table.select_columns([name])
        return self._images[split]

    def _image_keys(self, split: str) -> tuple[list[str], list[int]]:
        """Per row: the image key (`<split>:<first row with these image bytes>`) and an image id (a streamed split's
        rows without given ids: an image each, the images are not read)."""
        given_ids = self._column(split, "image_id")
        if self._streamed(split):
            rows = range(len(self._split_data(split)))
            return [f"{split}:{row}" for row in rows], [int(given_ids[r]) if given_ids else r for r in rows]
        images = self._raw_images(split)
        name = self.columns["image"]
        first_row: dict[Any, int] = {}
        keys, ids = [], []
        values = (value for batch in images.iter(batch_size=256) for value in batch[name])  # not all bytes at once
        for row, value in enumerate(values):
            identity = given_ids[row] if given_ids is not None else image_digest(value)
            first = first_row.setdefault(identity, row)
            keys.append(f"{split}:{first}")
            ids.append(int(given_ids[row]) if given_ids is not None else first)
        return keys, ids

    def open_image(self, image: str) -> Image.Image:
        split, _, row = image.partition(":")
        value = self._raw_images(split)[int(row)][self.columns["image"]]
        return open_image_value(value, f"{self.path} split {split} row {row}")

    def _read(self, kind: str, split: str) -> pa.Table:
        if self._streamed(split):
            return self._build(kind, split)  # bounded (vocabulary_samples rows): not cached
        dataset = self.data[self.split_names[split]]
        params = {"kind": kind, "split": split, "columns": self.columns, "fingerprint": dataset._fingerprint}
        return cached_table("hf", [], {**params, "version": READER_VERSION}, lambda: self._build(kind, split))

    def _build(self, kind: str, split: str) -> pa.Table:
        keys, image_ids = self._image_keys(split)
        if kind == "captions":
            captions = self._column(split, "caption")
            columns: dict[str, list] = {name: [] for name in CAPTIONS_SCHEMA.names}
            for row, value in enumerate(captions):
                for caption in caption_list(value):
                    columns["image_id"].append(image_ids[row])
                    columns["image"].append(keys[row])
                    columns["caption_id"].append(len(columns["caption_id"]))
                    columns["caption"].append(caption.strip())
            return pa.table(columns, schema=CAPTIONS_SCHEMA)
        questions = self._column(split, "question")
        answers = self._column(split, "answers") if self.columns["answers"] in self._names(split) else None
        qids, types = self._question_ids(split), self._column(split, "answer_type")
        rows = [
            qa_row(
                question_id=int(qids[row]) if qids is not None else row,
                image_id=image_ids[row],
                image=keys[row],
                question=question,
                answers=answers[row] if answers is not None else None,
                given_type=types[row] if types is not None else None,
            )
            for row, question in enumerate(questions)
        ]
        return pa.Table.from_pylist(rows, schema=QA_SCHEMA)

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
        if self._streamed(split):
            return file_columns(self.train_files[0])
        return self.data[self.split_names[split]].column_names

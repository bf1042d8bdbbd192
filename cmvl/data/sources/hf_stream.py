"""`dataset=hf dataset.streaming=true`: the training split of a local Hugging Face dataset read lazily from its own
Arrow / Parquet files, one piece at a time, through the shard stream of `cmvl.data.streaming` (the same dealing,
shuffle buffer, resume and corrupt-sample counting as `dataset=webdataset`); no table of the split is built.

A piece (the stream's "shard") is one record batch of an Arrow file (`save_to_disk` writes these) or one row group
of a Parquet file, named `<file>#<index>`. pyarrow reads a piece's columns (Arrow files memory-mapped, Parquet by
row group); `datasets` resolves which files hold the split. A `qa` sample is a row; a `captions` sample is one
caption of a row (a row with a list of captions gives one sample per caption), numbered as the table numbers it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from cmvl.data.images import decode_image
from cmvl.data.shards import digest_id
from cmvl.data.sources.base import QA_SCHEMA, answer_type, question_type, single_answer_annotations
from cmvl.data.sources.coco import CAPTIONS_SCHEMA
from cmvl.errors import ConfigError, DataError

FORMATS = (".arrow", ".parquet")
FIELDS = {"qa": ("image", "question", "answers", "question_id", "image_id", "answer_type"),
          "captions": ("image", "caption", "image_id")}  # fmt: skip
SCHEMAS = {"qa": QA_SCHEMA, "captions": CAPTIONS_SCHEMA}


def split_files(path: str, split_name: str) -> list[str]:
    """The Arrow / Parquet files that hold one split of a local dataset (`data_files`); anything else is refused."""
    if not Path(path).is_dir():
        raise ConfigError(
            f"dataset.streaming=true reads a local dataset folder; dataset.path={path} is none (download a hub "
            f"dataset first, e.g. `hf download {path} --repo-type dataset --local-dir DIR`)"
        )
    files = data_files(path, split_name)
    other = sorted({Path(file).suffix for file in files} - set(FORMATS))
    if other or not files:
        raise ConfigError(
            f"dataset.streaming=true reads Arrow or Parquet files; split '{split_name}' of {path} is held in "
            f"{', '.join(other) or 'no'} files (datasets' save_to_disk or to_parquet writes them; or set "
            "dataset.streaming=false)"
        )
    return files


def data_files(path: str, split_name: str) -> list[str]:
    """The files that hold one split of a local dataset folder: a `save_to_disk` folder's (its `state.json`), or
    those `datasets` resolves in a folder of data files (`data/train-*.parquet`, ...)."""
    folder = Path(path)
    if (folder / "dataset_dict.json").is_file():
        state = folder / split_name / "state.json"
        try:
            names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"dataset.path={path}: no readable split '{split_name}' ({state}: {err})") from None
        files = [str(folder / split_name / name) for name in names]
    else:
        import datasets

        try:
            resolved = datasets.load_dataset_builder(str(folder)).config.data_files or {}
        except (FileNotFoundError, ValueError) as err:
            raise DataError(
                f"dataset.path={path}: cannot read it with `datasets` ({str(err).splitlines()[0]})"
            ) from None
        if split_name not in resolved:
            raise DataError(f"dataset.path={path}: no split ['{split_name}'] (it has: {', '.join(resolved)})")
        files = [str(file) for file in resolved[split_name]]
    return files


def _arrow_batches(file: str) -> Iterator[pa.RecordBatch]:
    """An Arrow file's record batches, memory-mapped (`save_to_disk` writes the stream format; the file format
    is read too)."""
    source = pa.memory_map(file)
    try:
        yield from pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def file_pieces(file: str) -> list[tuple[str, int]]:
    """(piece name, rows) of every piece of one file: Parquet row groups from the footer, Arrow record batches
    from their headers (no data is read)."""
    try:
        if file.endswith(".parquet"):
            meta = pq.ParquetFile(file).metadata
            return [(f"{file}#{g}", meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        return [(f"{file}#{g}", batch.num_rows) for g, batch in enumerate(_arrow_batches(file))]
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{file}: not a readable {Path(file).suffix[1:]} file ({err})") from None


def file_columns(file: str) -> list[str]:
    if file.endswith(".parquet"):
        return pq.read_schema(file).names
    return next(_arrow_batches(file)).schema.names


def read_piece(piece: str, columns: list[str]) -> pa.Table:
    """The given columns of one piece (the only data of the split in memory at a time, besides the buffer)."""
    file, _, index = piece.rpartition("#")
    if file.endswith(".parquet"):
        return pq.ParquetFile(file).read_row_group(int(index), columns=columns)
    for g, batch in enumerate(_arrow_batches(file)):
        if g == int(index):
            return pa.Table.from_batches([batch]).select(columns)
    raise DataError(f"{piece}: no such record batch")


def captions_per_row(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """How many captions each row holds: 1 for a caption string, the list's length for a list (0 for null)."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.ones(len(column), dtype=np.int64)


def caption_list(value: Any) -> list[str]:
    """A row's captions: one string or a list of them (null: none)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def open_image_value(value: Any, name: str) -> Image.Image:
    """The image of a dataset's image value: an `Image` feature's {bytes, path} or a path string."""
    if isinstance(value, dict):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    else:
        source = value
    if not isinstance(source, (str, io.BytesIO)):
        raise DataError(f"unreadable image: {name} (neither image bytes nor a path: {type(source).__name__})")
    return decode_image(source, name=name)


def image_digest(value: Any) -> str:
    """What identifies an image value: its bytes' digest, else its path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return hashlib.sha1(value["bytes"]).hexdigest()
        return f"path:{value.get('path')}"
    return f"path:{value}"


def answer_list(value: Any) -> list[str] | None:
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


def qa_row(*, question_id: int, image_id: int, image: str, question: str, answers: Any, given_type: Any) -> dict:
    """One row of the `qa` table from a dataset row's values (`answers` as the dataset holds them)."""
    human = answer_list(answers)
    majority = max(set(human), key=human.count) if human else None
    return {
        "question_id": question_id,
        "image_id": image_id,
        "image": image,
        "question": question,
        "answers": human,
        "answer_type": given_type if given_type is not None else (answer_type(majority) if human else None),
        "question_type": question_type(question),
        "multiple_choice_answer": majority,
    }


class HFPieces:
    """How the training stream reads a split's pieces (`cmvl.data.streaming.SampleReader`) as `kind` samples.
    `columns`: table field → the dataset's column (None: derived); `pieces`: (piece, rows) of the whole split in
    order, which numbers the rows (a null question id is the row number) and captions (caption ids) as the table
    built from the split numbers them."""

    errors = (OSError, pa.ArrowException)  # a piece unreadable from some point on

    def __init__(self, kind: str, columns: dict[str, str | None], pieces: list[tuple[str, int]]) -> None:
        self.kind, self.schema = kind, SCHEMAS[kind]
        self.columns = {field: name for field, name in columns.items() if field in FIELDS[kind] and name is not None}
        self.first_row = dict(zip((p for p, _ in pieces), np.cumsum([0] + [n for _, n in pieces[:-1]]).tolist()))
        self.first_caption: dict[str, int] = {}

    def count_captions(self, pieces: list[str]) -> list[int]:
        """Captions per piece (the caption column only is read), which also numbers them."""
        counts = [int(captions_per_row(read_piece(p, [self.columns["caption"]]).column(0)).sum()) for p in pieces]
        self.first_caption = dict(zip(pieces, np.cumsum([0] + counts[:-1]).tolist()))
        return counts

    def read(self, shard: str, skip: int) -> Iterator[dict]:
        names = list(dict.fromkeys(self.columns.values()))
        table = read_piece(shard, names)
        row = self.first_row[shard]
        if self.kind == "qa":
            table, row = table.slice(skip), row + skip
            skip = 0
        else:  # start at the row that holds caption `skip`
            ends = np.cumsum(captions_per_row(table.column(self.columns["caption"])))
            start = int(np.searchsorted(ends, skip, side="right"))
            skip -= int(ends[start - 1]) if start else 0
            table, row = table.slice(start), row + start
            caption = self.first_caption[shard] + (int(ends[start - 1]) if start else 0)
        for batch in table.to_batches(max_chunksize=64):  # a few rows at a time in Python objects
            for values in batch.to_pylist():
                fields = {field: values[name] for field, name in self.columns.items()}
                if self.kind == "qa":
                    yield {"row": row, **fields}
                else:
                    for text in caption_list(fields.pop("caption")):
                        if skip:
                            skip -= 1
                        else:
                            yield {"row": row, "caption_id": caption, "caption": text, **fields}
                        caption += 1
                row += 1

    def decode(self, raw: dict, shard: str) -> tuple[Image.Image, dict]:
        name = f"{shard} row {raw['row']}"
        image = open_image_value(raw.get("image"), name)
        image_id = raw.get("image_id")
        if image_id is None:  # identical image bytes share an id
            image_id = digest_id(image_digest(raw.get("image")).encode())
        if self.kind == "captions":
            if not isinstance(raw["caption"], str) or not raw["caption"].strip():
                raise DataError(f"{name} has no caption")
            return image, {"image_id": int(image_id), "image": "", "caption_id": raw["caption_id"],
                           "caption": raw["caption"].strip()}  # fmt: skip
        if not isinstance(raw.get("question"), str) or answer_list(raw.get("answers")) is None:
            raise DataError(f"{name} has no question or no answers")
        question_id = raw.get("question_id")
        row = qa_row(
            question_id=int(question_id) if question_id is not None else raw["row"],
            image_id=int(image_id),
            image="",
            question=raw["question"],
            answers=raw.get("answers"),
            given_type=raw.get("answer_type"),
        )
        return image, row

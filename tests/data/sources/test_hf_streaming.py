"""dataset=hf dataset.streaming=true: the training split of a local dataset (save_to_disk Arrow files, Parquet row
groups) streamed piece by piece through the shard stream: the same content as its table, dealt disjointly over
ranks and workers, resumed within the buffer bound, never loaded as a table; bad settings refused in one line."""

from __future__ import annotations

import logging
from collections import Counter
from io import BytesIO
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from torchdata.stateful_dataloader import StatefulDataLoader

from cmvl.data.images import build_transform
from cmvl.data.sources import hf, hf_stream
from cmvl.data.sources.hf import HFSource
from cmvl.data.sources.shapes import ShapesSource
from cmvl.data.streaming import ShardStream, WorkerStream
from cmvl.errors import ConfigError, DataError
from tests.conftest import TINY_SPEC, TINY_TRAINING, cli_in_process
from tests.stream_helpers import preempted_and_resumed

IMAGE = datasets.Image()
QA_COLUMNS = {"image": "picture", "question_id": "qid"}


@pytest.fixture(scope="module")
def shapes(tiny_world):
    return ShapesSource(root=str(tiny_world), num_images=TINY_SPEC.images, image_size=TINY_SPEC.size, seed=3)


def _image_values(shapes, table) -> list[dict]:
    return [{"bytes": (shapes.root / p).read_bytes(), "path": None} for p in table.column("image").to_pylist()]


@pytest.fixture(scope="module")
def qa_folder(shapes, tmp_path_factory) -> Path:
    """The shapes world's questions saved with save_to_disk: train (300 rows) in 4 Arrow files, validation in 1."""
    splits = {}
    for split, name in (("train", "train"), ("val", "validation")):
        table = shapes.table("qa", split)
        columns = {"picture": _image_values(shapes, table), "qid": table.column("question_id").to_pylist()}
        columns |= {c: table.column(c).to_pylist() for c in ("question", "answers")}
        splits[name] = datasets.Dataset.from_dict(columns).cast_column("picture", IMAGE)
    folder = tmp_path_factory.mktemp("hf_stream") / "qa"
    datasets.DatasetDict(splits).save_to_disk(str(folder), num_shards={"train": 4, "validation": 1})
    return folder


@pytest.fixture(scope="module")
def captions_folder(shapes, tmp_path_factory) -> Path:
    """The shapes world's captions as Parquet, one row per image with a list of its captions: train in 2 files of
    2 row groups each (15 images a group), validation in 1."""
    folder = tmp_path_factory.mktemp("hf_stream") / "captions" / "data"
    for split, name in (("train", "train"), ("val", "validation")):
        table = shapes.table("captions", split)
        by_image: dict[str, list[str]] = {}
        for image, caption in zip(table.column("image").to_pylist(), table.column("caption").to_pylist()):
            by_image.setdefault(image, []).append(caption)
        rows = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": (shapes.root / p).read_bytes(), "path": None} for p in by_image],
                "caption": list(by_image.values()),
            }  # fmt: skip
        ).cast_column("image", IMAGE)
        halves = 2 if split == "train" else 1
        for k in range(halves):
            part = rows.shard(halves, k, contiguous=True)
            part.to_parquet(str(folder / f"{name}-{k:05d}-of-{halves:05d}.parquet"), batch_size=15)
    return folder.parent


def _stream(source: HFSource, kind: str, **settings) -> ShardStream:
    options = {"batch_size": 1, "seed": 0, "shuffle_buffer": source.shuffle_buffer, "max_bad_fraction": 0.0}
    return ShardStream(
        source.train_shards,
        source.train_counts(kind),
        reader=source.train_reader(kind),
        transform=build_transform(image_size=16, train=True),
        **{**options, **settings},
    )


QA_FIELDS = ("question_id", "question", "answers", "answer_type", "question_type", "multiple_choice_answer")


@pytest.mark.parametrize("kind", ["qa", "captions"])
def test_one_epoch_of_the_stream_is_the_table_without_shuffle(qa_folder, captions_folder, kind, cache_dir):
    folder, columns = (qa_folder, QA_COLUMNS) if kind == "qa" else (captions_folder, {})
    streamed = HFSource(path=str(folder), columns=columns, streaming=True, shuffle_buffer=0)
    table = HFSource(path=str(folder), columns=columns)
    expected = table.table(kind, "train")
    assert len(streamed.train_shards) == 4  # 4 Arrow record batches, or 2 files × 2 Parquet row groups
    items = list(WorkerStream(_stream(streamed, kind), epoch=0, slot=0))
    fields = QA_FIELDS if kind == "qa" else ("caption_id", "caption")
    key = fields[0]
    got = sorted(({f: row[f] for f in fields} for _, row in items), key=lambda row: row[key])
    assert got == [{f: row[f] for f in fields} for row in expected.to_pylist()]
    # the same pixels as the table's image of that row; rows with the same image bytes share an image id
    by_key = {row[key]: row for row in expected.to_pylist()}
    transform = build_transform(image_size=16, train=True)
    for image, row in items[:5]:
        assert np.array_equal(image.numpy(), transform(table.open_image(by_key[row[key]]["image"])).numpy())
    ids = Counter(row["image_id"] for _, row in items)
    assert len(ids) == len(set(expected.column("image_id").to_pylist())) == TINY_SPEC.images["train"]
    # the streamed split's table: its first vocabulary_samples rows (qa: questions; captions: images), no image read
    vocabulary = HFSource(path=str(folder), columns=columns, streaming=True, vocabulary_samples=7).table(kind, "train")
    assert len(set(vocabulary.column("image").to_pylist())) == 7
    assert vocabulary.column(key).to_pylist() == expected.column(key).to_pylist()[: vocabulary.num_rows]


def test_ranks_and_workers_get_disjoint_shares_covering_every_sample(qa_folder, cache_dir):
    source = HFSource(path=str(qa_folder), columns=QA_COLUMNS, streaming=True, shuffle_buffer=8)
    streams = [_stream(source, "qa", world=2, rank=rank, workers=2) for rank in (0, 1)]
    assert len(streams[0]) == 2 * 75  # 300 questions // 4 slots, per worker
    shares = {}
    for rank, stream in enumerate(streams):
        for worker in (0, 1):
            shares[rank, worker] = [
                row["question_id"] for _, row in WorkerStream(stream, epoch=0, slot=2 * rank + worker)
            ]
    assert all(len(share) == 75 for share in shares.values())
    merged = [qid for share in shares.values() for qid in share]
    table = HFSource(path=str(qa_folder), columns=QA_COLUMNS).table("qa", "train")
    assert sorted(merged) == sorted(table.column("question_id").to_pylist())  # disjoint, and nothing left out
    assert merged != sorted(merged)  # the buffer shuffled them


def _loader(stream: ShardStream) -> StatefulDataLoader:
    return StatefulDataLoader(stream, batch_size=4, collate_fn=lambda items: [row["question_id"] for _, row in items])


def test_a_stopped_stream_resumes_exactly_and_another_rank_within_the_buffer(qa_folder, cache_dir):
    source = HFSource(path=str(qa_folder), columns=QA_COLUMNS, streaming=True, shuffle_buffer=8)
    expected = [list(_loader(_stream(source, "qa", world=2, rank=r))) for r in (0, 1)]
    stopped = _loader(_stream(source, "qa", world=2, rank=0))
    batches = iter(stopped)
    before = [next(batches) for _ in range(9)]
    state = stopped.state_dict()  # what a checkpoint keeps (rank 0's)
    resumed = _loader(_stream(source, "qa", world=2, rank=0))
    resumed.load_state_dict(state)
    assert before + list(resumed) == expected[0]  # nothing repeated, nothing skipped
    other = _loader(_stream(source, "qa", world=2, rank=1))
    other.load_state_dict(state)
    full = [q for batch in expected[1] for q in batch]
    got = full[:36] + [q for batch in other for q in batch]
    repeated, skipped = Counter(got) - Counter(full), Counter(full) - Counter(got)
    assert sum(repeated.values()) <= 8 and sum(skipped.values()) <= 8  # at most shuffle_buffer each


def test_the_split_is_never_loaded_as_a_table_only_one_piece_at_a_time(qa_folder, monkeypatch, cache_dir):
    loaded, pieces = [], []
    load_from_disk, read_piece = datasets.load_from_disk, hf_stream.read_piece

    def loading(path, *args, **kwargs):
        loaded.append(Path(path).name)
        return load_from_disk(path, *args, **kwargs)

    def reading(piece, columns):
        pieces.append(piece)
        return read_piece(piece, columns)

    monkeypatch.setattr(datasets, "load_from_disk", loading)
    monkeypatch.setattr(hf_stream, "read_piece", reading)
    monkeypatch.setattr(hf, "read_piece", reading)
    source = HFSource(path=str(qa_folder), columns=QA_COLUMNS, streaming=True, vocabulary_samples=10)
    assert loaded == ["validation"]  # the train split's Arrow files are not opened as a Dataset
    assert source.table("qa", "train").num_rows == 10 and pieces == [source.train_shards[0]]
    items = WorkerStream(_stream(source, "qa", shuffle_buffer=0), epoch=0, slot=0)
    next(items)
    assert len(pieces) == 2  # the first sample reads one piece of 75 rows, not the split


def _overrides(folder: Path, *extra: str, streaming: str = "true") -> list[str]:
    return [
        "dataset=hf",
        f"dataset.path={folder}",
        "dataset.columns.image=picture",
        "dataset.columns.question_id=qid",
        f"dataset.streaming={streaming}",
        "dataset.shuffle_buffer=16",
        "task.min_answer_count=1",
        "vision.image_size=32",
        "data.num_workers=0",
        *TINY_TRAINING,
        *extra,
    ]


def test_vqa_trains_on_the_stream_and_a_preempted_run_resumes_on_the_same_batches(qa_folder, tmp_path, cache_dir):
    run = _overrides(
        qa_folder, f"paths.output_dir={tmp_path / 'run'}", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1",
    )  # fmt: skip
    summary, trained = preempted_and_resumed(run, step=2, texts=tmp_path / "questions.txt")
    assert summary["global_step"] == 4 and summary["monitor"] == "val/vqa/acc"

    source = HFSource(path=str(qa_folder), columns=QA_COLUMNS, streaming=True, shuffle_buffer=16)
    stream = _stream(source, "qa", batch_size=16)
    items = iter(WorkerStream(stream, epoch=0, slot=0))
    expected = [" | ".join(next(items)[1]["question"] for _ in range(16)) for _ in range(4)]
    assert trained == expected


def test_an_unreadable_image_is_skipped_and_counted(tmp_path, caplog, cache_dir):
    buffer = BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, "PNG")
    pictures = [{"bytes": buffer.getvalue(), "path": None}, {"bytes": b"\x89PNG broken", "path": None}] * 3
    rows = {"image": pictures, "caption": [f"caption {i}" for i in range(6)]}
    folder = tmp_path / "broken"
    train = datasets.Dataset.from_dict(rows).cast_column("image", IMAGE)
    datasets.DatasetDict({"train": train, "validation": train}).save_to_disk(str(folder))
    source = HFSource(path=str(folder), streaming=True, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING):
        items = list(WorkerStream(_stream(source, "captions", batch_size=4, max_bad_fraction=0.75), epoch=0, slot=0))
    # 4 samples an epoch: the 3 readable ones, then the first again (a second pass)
    assert [row["caption"] for _, row in items] == ["caption 0", "caption 2", "caption 4", "caption 0"]
    assert (
        sum("unreadable image" in r.getMessage() and r.getMessage().startswith("skipped") for r in caplog.records) == 3
    )
    with pytest.raises(DataError, match="unreadable training samples in one loader worker's epoch"):
        list(WorkerStream(_stream(source, "captions", batch_size=4, max_bad_fraction=0.5), epoch=0, slot=0))


def test_streaming_yes_is_refused_in_one_line(qa_folder, tmp_path, cache_dir):
    run = _overrides(qa_folder, f"paths.output_dir={tmp_path / 'run'}", streaming="yes")
    done = cli_in_process("train", *run, cwd=tmp_path)
    assert done.returncode == 2 and "dataset.streaming=yes: must be true or false" in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("cmvl: run directory")]
    assert len(lines) == 1 and lines[0].startswith("cmvl: error: "), lines


def test_a_column_the_files_lack_a_hub_name_or_other_files_are_refused(qa_folder, tmp_path, cache_dir):
    with pytest.raises(DataError, match=r"dataset.columns.image=photo: no such column in split 'train' \(columns: "):
        HFSource(path=str(qa_folder), columns={"image": "photo"}, streaming=True)
    with pytest.raises(ConfigError, match=r"reads a local dataset folder; dataset.path=someone/some_vqa is none"):
        HFSource(path="someone/some_vqa", streaming=True)
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text('{"image": "a.png", "question": "what?", "answers": "yes"}\n')
    with pytest.raises(ConfigError, match=r"reads Arrow or Parquet files; split 'train' of .* is held in .jsonl files"):
        HFSource(path=str(tmp_path), streaming=True)

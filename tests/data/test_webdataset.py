"""dataset=webdataset: `cmvl data shards` writes img2dataset-layout shards; training streams them (dealt out by
shard over processes and workers, shuffled in a buffer, resumed exactly), skipping and counting corrupt samples."""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from cmvl.data.images import build_transform
from cmvl.data.shard_writer import write_shards
from cmvl.data.shards import TarSamples, count_samples
from cmvl.data.sources.webdataset_shards import WebDatasetSource
from cmvl.data.streaming import ShardStream, WorkerStream
from cmvl.errors import DataError
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, cli_in_process
from tests.stream_helpers import preempted_and_resumed

SHARD_SIZE = 50  # the tiny world's 300 training captions: 6 shards


@pytest.fixture(scope="module")
def shards(tiny_world, tmp_path_factory) -> dict[str, str]:
    """The tiny world's train and val captions as shards: split → shard pattern (as the command printed it)."""
    out = tmp_path_factory.mktemp("webdataset") / "shards"
    done = cli_in_process(
        "data", "shards", f"out={out}", f"shard_size={SHARD_SIZE}", "splits=train,val", *TINY_WORLD_ANY_TASK,
        cwd=out.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(re.findall(r"^(\w+): \d+ samples in (\S+)$", done.stdout, re.M))


def _source(shards: dict[str, str], **settings) -> WebDatasetSource:
    return WebDatasetSource(train=shards["train"], val=shards["val"], **settings)


def _stream(source: WebDatasetSource, shards=None, counts=None, **settings) -> ShardStream:
    options = {"batch_size": 8, "seed": 0, "shuffle_buffer": 16, "max_bad_fraction": 0.0, **settings}
    return ShardStream(
        shards or source.train_shards,
        counts or source.train_counts(),
        reader=TarSamples(),
        transform=build_transform(image_size=16, train=True),
        **options,
    )


def _ids(items) -> list[int]:
    return [row["caption_id"] for _, row in items]


def _loader(stream: ShardStream) -> StatefulDataLoader:
    return StatefulDataLoader(
        stream, batch_size=8, num_workers=stream.workers, collate_fn=_ids, persistent_workers=stream.workers > 0
    )


def test_shards_hold_img2dataset_samples_and_are_written_whole(shards, tiny_world, tmp_path, monkeypatch):
    assert shards["train"].endswith("train/{000000..000005}.tar") and shards["val"].endswith("val/{000000..000001}.tar")
    first = Path(shards["val"].replace("{000000..000001}", "000000"))
    with tarfile.open(first) as tar:
        names = tar.getnames()[:3]
        meta = json.loads(tar.extractfile(names[1]).read())
        caption = tar.extractfile(names[2]).read().decode()
    assert names == ["000000000.jpg", "000000000.json", "000000000.txt"]
    assert meta["caption"] == caption and {"image_id", "caption_id", "image"} <= set(meta)

    again = cli_in_process("data", "shards", f"out={first.parents[1]}", *TINY_WORLD_ANY_TASK, cwd=tmp_path)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    # A write that dies on its 120th sample leaves neither a shard nor a temporary folder
    from webdataset import TarWriter

    write, calls = TarWriter.write, []

    def dying_write(self, sample):
        calls.append(1)
        if len(calls) == 120:
            raise KeyboardInterrupt
        return write(self, sample)

    monkeypatch.setattr(TarWriter, "write", dying_write)
    source = _source(shards)
    with pytest.raises(KeyboardInterrupt):
        write_shards(source, tmp_path / "out", splits=["val", "train"], shard_size=SHARD_SIZE)
    assert list(tmp_path.iterdir()) == []


def test_the_stream_deals_whole_shards_to_every_worker_of_every_process(shards):
    source = _source(shards)
    assert source.splits == ("train", "val") and sum(source.train_counts()) == 300
    # the counts come from the sizes.json the command wrote, which says what the member headers say
    sizes = json.loads((Path(source.train_shards[0]).parent / "sizes.json").read_text())
    assert list(sizes.values()) == source.train_counts() == [count_samples(s) for s in source.train_shards]
    assert source.table("captions", "val").num_rows == 100  # the val table; images stay in the tar
    streams = [_stream(source, world=2, rank=rank, workers=2) for rank in (0, 1)]
    assert len(streams[0]) == 2 * 72  # 300 samples // (4 slots × 8) × 8 per worker
    seen = {}
    for epoch in (0, 1):
        for rank, stream in enumerate(streams):
            for worker in (0, 1):
                slot = rank * 2 + worker
                items = list(WorkerStream(stream, epoch=epoch, slot=slot))
                assert len(items) == 72 and all(image.shape == (3, 16, 16) for image, *_ in items)
                seen[epoch, slot] = set(_ids(items))
        # disjoint slots: no sample goes to two workers (a slot dealt one 50-sample shard reads it again)
        slots = [seen[epoch, s] for s in range(4)]
        assert sum(map(len, slots)) == len(set().union(*slots))
        assert sorted(map(len, slots)) == [50, 50, 72, 72]
    assert [seen[0, s] for s in range(4)] != [seen[1, s] for s in range(4)]  # each epoch deals anew


def test_a_resumed_stream_continues_exactly(shards):
    source = _source(shards)
    uninterrupted = _loader(_stream(source, workers=2))
    expected = [list(uninterrupted), list(uninterrupted)]  # two epochs
    stopped = _loader(_stream(source, workers=2))
    batches = iter(stopped)
    before = [next(batches) for _ in range(5)]
    resumed = _loader(_stream(source, workers=2))
    resumed.load_state_dict(stopped.state_dict())
    assert before + list(resumed) == expected[0]
    assert list(resumed) == expected[1]  # the next epoch deals as the uninterrupted run's did


def test_another_rank_resumed_from_rank_0s_state_repeats_and_skips_at_most_the_buffer(shards):
    """Under DDP every rank loads the checkpoint's loader state, which is rank 0's."""
    source = _source(shards)
    rank1 = [_loader(_stream(source, world=2, rank=1)) for _ in range(2)]
    full = [i for batch in rank1[0] for i in batch]
    rank0 = _loader(_stream(source, world=2, rank=0))
    batches = iter(rank0)
    first = [i for batch in [next(batches) for _ in range(3)] for i in batch]
    rank1[1].load_state_dict(rank0.state_dict())
    got = full[: len(first)] + [i for batch in rank1[1] for i in batch]
    assert len(got) == len(full) == 144
    repeated, skipped = Counter(got) - Counter(full), Counter(full) - Counter(got)
    assert 0 < sum(repeated.values()) <= 16 and sum(skipped.values()) <= 16


def _crafted_shard(path: Path, good: dict) -> None:
    """A shard of 3 samples: a garbled JPEG, one without a caption, and a good one."""
    with tarfile.open(path, "w") as tar:
        for name, data in [("a.jpg", b"\xff\xd8 not a jpeg"), ("a.txt", b"garbled"), ("b.jpg", good["jpg"]),
                           ("c.jpg", good["jpg"]), ("c.txt", b"a good one")]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corrupt_samples_are_skipped_and_counted_up_to_the_bad_fraction(shards, tmp_path, caplog):
    from cmvl.data.shards import read_shard

    source = _source(shards)
    good = next(read_shard(source.train_shards[0]))
    crafted = tmp_path / "crafted.tar"
    _crafted_shard(crafted, good)
    # batches of 51: the epoch takes every good sample of the crafted shard and a 50-sample one, so reads both bad
    files, counts = [str(crafted), source.train_shards[0]], [3, 50]
    stream = _stream(source, files, counts, batch_size=51, max_bad_fraction=0.05, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING):
        items = list(WorkerStream(stream, epoch=0, slot=0))
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(items) == 51 and "a good one" in [row["caption"] for _, row in items]
    assert len(skipped) == 2 and "unreadable image" in skipped[0] and "(1 of at most 2)" in skipped[0]
    assert "no caption" in skipped[1]
    too_many = _stream(source, files, counts, batch_size=51, max_bad_fraction=0.02, shuffle_buffer=0)
    with pytest.raises(DataError, match=r"2 unreadable training samples in one loader worker's epoch, more than"):
        list(WorkerStream(too_many, epoch=0, slot=0))


def _train_overrides(shards: dict[str, str], run_dir: Path, *extra: str, task: str = "retrieval") -> list[str]:
    return [
        "dataset=webdataset",
        f"task={task}",
        f"dataset.train='{shards['train']}'",
        f"dataset.val='{shards['val']}'",
        "vision.image_size=32",
        "data.num_workers=0",
        *TINY_TRAINING,
        f"paths.output_dir={run_dir}",
        *extra,
    ]


def test_retrieval_trains_on_shards_and_a_preempted_run_resumes_exactly(shards, tmp_path):
    run = _train_overrides(shards, tmp_path / "run", "trainer.limit_train_batches=4")
    summary, trained = preempted_and_resumed(run, step=3, texts=tmp_path / "captions.txt")
    assert summary["global_step"] == 8

    # what the two runs trained on: the stream's first 4 batches of epochs 0 and 1, each batch once
    stream = _stream(_source(shards), batch_size=16, shuffle_buffer=1000)
    expected = []
    for epoch in (0, 1):
        items = iter(WorkerStream(stream, epoch=epoch, slot=0))
        expected += [" | ".join(next(items)[1]["caption"] for _ in range(16)) for _ in range(4)]
    assert trained == expected


CAPTION_RUN = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "task.beam_size=1", "task.meteor=never"]


def test_captioning_trains_on_shards_and_evaluates_on_the_val_shards(shards, tmp_path):
    from cmvl.config.compose import compose_config
    from cmvl.training.train import run_training

    run_dir = tmp_path / "run"
    summary = run_training(compose_config(_train_overrides(shards, run_dir, *CAPTION_RUN, task="caption")))
    assert summary["monitor"] == "val/caption/cider"
    done = cli_in_process("eval", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"out={tmp_path / 'eval'}",
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    predictions = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "val/caption/cider" in predictions["metrics"]


@pytest.mark.parametrize(
    ("task", "overrides", "message"),
    [
        ("vqa", [], "task=vqa needs 'qa' annotations, which dataset=webdataset does not provide"),
        ("retrieval", ["dataset.shuffle_buffer=-1"], "dataset.shuffle_buffer=-1: must be an integer >= 0"),
        ("caption", ["data.group_by_image=true"], "data.group_by_image=true: dataset=webdataset streams samples"),
    ],
)
def test_bad_settings_are_refused_in_one_line(shards, tmp_path, task, overrides, message):
    run = _train_overrides(shards, tmp_path / "run", *overrides, task=task)
    done = cli_in_process("train", *run, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    # the refusal is one line (after, at most, the line naming the run directory)
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("cmvl: run directory")]
    assert len(lines) == 1 and lines[0].startswith("cmvl: error: ")


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("/nowhere/{0..3}.tar", "dataset.train: 4 of 4 shard files not found, e.g. /nowhere/0.tar"),
        ("fake.tar", "fake.tar: not a readable tar file"),
    ],
)
def test_shards_that_are_missing_or_no_tar_are_refused_in_one_line(shards, tmp_path, train, message):
    (tmp_path / "fake.tar").write_bytes(b"not a tar file" * 100)
    run = _train_overrides({**shards, "train": train}, tmp_path / "run")
    done = cli_in_process("train", *run, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]

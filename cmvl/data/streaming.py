"""Training batches streamed from tar shards (`dataset=webdataset`): no table of the training split exists.

The stream reads its shards through a `reader` (`SampleReader`: tar shards, `cmvl.data.shards.TarSamples`; a Hugging
Face dataset's Arrow / Parquet pieces, `cmvl.data.sources.hf_stream.HFPieces`); everything below is the same for both.
Each epoch the shards are put in a seeded random order (a pure function of `seed` and the epoch) and dealt out by
shard, round robin, over every loader worker of every process (slot = rank × workers + worker). A worker reads its
shards in turn through a shuffle buffer of `shuffle_buffer` samples (it holds the images' encoded bytes; decoding
happens as a sample leaves it, and the buffer empties at the end of the worker's shards) and yields exactly
`samples_per_worker` samples per epoch: the sample count of all shards ÷ (processes × workers × batch size), in
whole batches, so every process runs the same number of steps. A worker whose shards hold fewer samples reads them
again; one whose shards hold more leaves the rest to a later epoch's deal.

Resuming (`StatefulDataLoader` keeps each worker's `state_dict` with the batch it belongs to): the state is the
epoch, the counts of samples taken and read, and the positions of the samples in the buffer; which sample leaves
the buffer next depends on nothing else (`_pick`). A resumed worker reads the buffered samples again from their
shards and goes on exactly as the uninterrupted stream: nothing is repeated or skipped. Under DDP only rank 0's
loader state is in the checkpoint, so every process resumes from rank 0's counts and buffer positions, applied to
its own shards: rank 0 exactly, another rank repeating or skipping at most `shuffle_buffer` samples per worker
(those in its buffer when it stopped; 0 with `shuffle_buffer=0`), plus the difference in the unreadable samples
the two ranks skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from torch.utils.data import IterableDataset, get_worker_info

from cmvl.errors import ConfigError, DataError
from cmvl.log import EVERY_RANK, get_logger

log = get_logger(__name__)


class SampleReader(Protocol):
    """How a stream reads its shards: `read(shard, skip)` the shard's raw samples after the first `skip` (what the
    shuffle buffer holds: encoded images), `decode(raw, shard)` one sample as (RGB image, row of the table `schema`)
    or a `DataError` for an unreadable one; `errors`: what `read` raises when the rest of a shard is unreadable."""

    schema: pa.Schema
    errors: tuple[type[BaseException], ...]

    def read(self, shard: str, skip: int) -> Iterator[Any]: ...

    def decode(self, raw: Any, shard: str) -> tuple[Any, dict[str, Any]]: ...


class ShardStream(IterableDataset):
    """The training stream of one process (`rank` of `world`) over `workers` loader workers (0: the main process).
    Items are (image uint8 3×H×W, row of `reader.schema`); `transform` resizes the image."""

    def __init__(
        self,
        shards: list[str],
        counts: list[int],
        *,
        reader: SampleReader,
        transform: Callable,
        batch_size: int,
        seed: int,
        shuffle_buffer: int,
        max_bad_fraction: float,
        world: int = 1,
        rank: int = 0,
        workers: int = 0,
    ) -> None:
        self.shards, self.counts = list(shards), np.asarray(counts, dtype=np.int64)
        self.reader, self.transform = reader, transform
        self.seed, self.shuffle_buffer, self.max_bad_fraction = seed, shuffle_buffer, max_bad_fraction
        self.world, self.rank, self.workers = world, rank, workers
        self.slots = world * max(1, workers)
        if len(self.shards) < self.slots:
            raise DataError(
                f"{len(self.shards)} training shards for {world} process(es) × {max(1, workers)} loader worker(s): "
                "every worker reads whole shards, so write more, smaller shards (cmvl data shards shard_size=N)"
            )
        self.samples_per_worker = int(self.counts.sum()) // (self.slots * batch_size) * batch_size
        self.next_epoch = 0

    def __len__(self) -> int:
        """Samples this process yields per epoch (all its workers)."""
        return self.samples_per_worker * max(1, self.workers)

    def epoch_shards(self, epoch: int, slot: int) -> list[int]:
        """The shard indices that worker slot `slot` reads in `epoch`, in reading order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        return order[slot :: self.slots].tolist()

    # StatefulDataLoader saves the dataset's state beside its iterator's: the epoch the next `iter()` starts.
    def state_dict(self) -> dict[str, int]:
        return {"next_epoch": self.next_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.next_epoch = int(state["next_epoch"])

    def __iter__(self) -> WorkerStream:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        stream = WorkerStream(self, epoch=self.next_epoch, slot=self.rank * max(1, self.workers) + worker)
        self.next_epoch += 1
        return stream


class WorkerStream:
    """One worker's epoch: an iterator whose `state_dict` is its position (see the module docstring)."""

    def __init__(self, stream: ShardStream, *, epoch: int, slot: int) -> None:
        self.stream, self.epoch, self.slot = stream, epoch, slot
        self.consumed = self.yielded = self.bad = 0
        self.read = 0  # position in the current pass over this worker's shards of the next sample to read
        self.buffer: list[tuple[int, Any, str]] = []  # (position in the pass, raw sample, shard)
        self._restore: list[int] | None = None  # a loaded state's buffer positions, read back on the next item
        self._items: Iterator | None = None

    def state_dict(self) -> dict[str, Any]:
        counts = {"epoch": self.epoch, "consumed": self.consumed, "yielded": self.yielded, "bad": self.bad}
        return {**counts, "read": self.read, "buffer": [position for position, _, _ in self.buffer]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self.yielded, self.bad, self.read = int(state["yielded"]), int(state["bad"]), int(state["read"])
        self._restore = [int(p) for p in state["buffer"]]
        self.stream.next_epoch = self.epoch + 1
        self._items = None

    def __iter__(self) -> WorkerStream:
        return self

    def __next__(self) -> tuple:
        if self.yielded >= self.stream.samples_per_worker:
            raise StopIteration
        if self._items is None:
            self._items = self._samples()
        return next(self._items)

    def _pass(self) -> tuple[list[int], np.ndarray]:
        """This worker's shards in `epoch` (indices into the stream's shards) and where each starts in a pass."""
        mine = self.stream.epoch_shards(self.epoch, self.slot)
        return mine, np.concatenate([[0], np.cumsum(self.stream.counts[mine])])

    def _raw(self, start: int, stop: int | None = None) -> Iterator[tuple[int, Any, str]]:
        """(position, raw sample, shard) of one pass over this worker's shards, positions `start` to `stop`."""
        mine, starts = self._pass()
        stop = int(starts[-1]) if stop is None else stop
        first = int(np.searchsorted(starts, start, side="right")) - 1
        for k in range(max(first, 0), len(mine)):
            if starts[k] >= stop:
                return
            shard = self.stream.shards[mine[k]]
            skip = max(0, start - int(starts[k]))
            try:
                for i, raw in enumerate(self.stream.reader.read(shard, skip), start=int(starts[k]) + skip):
                    if i >= stop:
                        return
                    yield i, raw, shard
            except self.stream.reader.errors as err:  # a truncated or garbled shard
                self._skip(DataError(f"shard {shard}: unreadable from here on ({err}); reading the next shard"))

    def _reread(self, positions: list[int]) -> list[tuple[int, Any, str]]:
        """The buffered samples of a saved state, read again from their shards (each shard from its start to the
        last one needed: usually the last shard or two that the pass read)."""
        if not positions:
            return []
        wanted = set(positions)
        found = {i: (i, raw, shard) for i, raw, shard in self._raw(min(wanted), max(wanted) + 1) if i in wanted}
        return [found[p] for p in positions if p in found]

    def _pick(self, n: int) -> int:
        """Which of `n` buffered samples leaves next: a function of the seed, epoch, slot and samples consumed only
        (no generator state), so a resumed stream picks as the uninterrupted one would."""
        key = f"{self.stream.seed}:{self.epoch}:{self.slot}:{self.consumed}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % n

    def _samples(self) -> Iterator[tuple]:
        """The epoch's items: passes over this worker's shards (another pass where one holds fewer samples than the
        epoch takes), each through the shuffle buffer, which empties at the pass's end."""
        size, total = self.stream.shuffle_buffer, int(self._pass()[1][-1])
        if total == 0:
            raise DataError(f"the training shards of loader slot {self.slot} hold no samples")
        if self._restore is not None:
            self.buffer, self._restore = self._reread(self._restore), None
        while True:
            reader = self._raw(self.read)
            for fresh in reader:
                self.read = fresh[0] + 1
                if len(self.buffer) < size:
                    self.buffer.append(fresh)
                    continue
                if self.buffer:
                    j = self._pick(len(self.buffer))
                    out, self.buffer[j] = self.buffer[j], fresh
                else:
                    out = fresh
                yield from self._take(out)
            self.read = total
            while self.buffer:
                j = self._pick(len(self.buffer))
                out, self.buffer[j] = self.buffer[j], self.buffer[-1]
                self.buffer.pop()
                yield from self._take(out)
            self.read = 0  # the next pass

    def _take(self, entry: tuple[int, Any, str]) -> Iterator[tuple]:
        """One sample out of the buffer: decoded and yielded, or skipped and counted as unreadable."""
        self.consumed += 1
        item = self._decode(entry[1], entry[2])
        if item is not None:
            self.yielded += 1
            yield item

    def _decode(self, raw: Any, shard: str) -> tuple | None:
        try:
            image, row = self.stream.reader.decode(raw, shard)
            return self.stream.transform(image), row
        except DataError as err:
            self._skip(err)
            return None

    def _skip(self, err: DataError) -> None:
        """Counts a corrupt sample (or a shard's unreadable rest) against `data.max_bad_fraction` of the samples
        this worker yields per epoch, as an unreadable image of a table-backed split is."""
        self.bad += 1
        allowed = int(self.stream.max_bad_fraction * self.stream.samples_per_worker)
        if self.bad > allowed:
            raise DataError(
                f"{self.bad} unreadable training samples in one loader worker's epoch, more than data.max_bad_fraction"
                f"={self.stream.max_bad_fraction} of its {self.stream.samples_per_worker} samples allow (last: {err})"
            ) from None
        log.warning(f"skipped {err} ({self.bad} of at most {allowed})", extra=EVERY_RANK)


def stream_table(items: list[tuple], schema: pa.Schema) -> pa.Table:
    """A batch of streamed items as rows of their table (`captions`, `qa`: what a task reads its texts and targets
    from)."""
    return pa.Table.from_pylist([row for _, row in items], schema=schema)


class StreamCollator:
    """Makes a `Batch` of streamed items as the table-backed `Collator` does, from a table of just these rows: the
    task's texts (tokenised here, per batch) and targets."""

    def __init__(self, member, schema: pa.Schema, tokenizer, text_max_length: int, queries=None) -> None:
        self.member, self.schema, self.queries = member, schema, queries
        self.tokenizer, self.text_max_length = tokenizer, text_max_length

    def __call__(self, items: list[tuple]):
        from cmvl.data.datamodule import Collator, Sample
        from cmvl.data.text import TokenizedTexts

        table = self.member.rows(stream_table(items, self.schema), train=True)
        texts = self.member.texts(table)
        tokens = None if texts is None else TokenizedTexts(self.tokenizer, texts, self.text_max_length)
        samples = [
            Sample(image, None if texts is None else texts[i], None if tokens is None else tokens.row(i), i, image_id)
            for i, (image, image_id) in enumerate((image, row["image_id"]) for image, row in items)
        ]
        collate = Collator(tokens, self.member.targets(table), self.member.name, self.queries)
        return collate(samples)


def check_stream_settings(shuffle_buffer: Any, vocabulary_samples: Any) -> None:
    """A streamed source's `dataset.shuffle_buffer` and `dataset.vocabulary_samples`, refused in one line if bad."""
    if not isinstance(shuffle_buffer, int) or isinstance(shuffle_buffer, bool) or shuffle_buffer < 0:
        raise ConfigError(f"dataset.shuffle_buffer={shuffle_buffer}: must be an integer >= 0")
    if not isinstance(vocabulary_samples, int) or isinstance(vocabulary_samples, bool) or vocabulary_samples < 1:
        raise ConfigError(f"dataset.vocabulary_samples={vocabulary_samples}: must be an integer >= 1")


def loader_workers(shards: int, world: int, requested: int) -> int:
    """Loader workers per process: the requested number, fewer where there are not enough shards for each to read
    its own (said in one line)."""
    usable = max(0, shards // world)
    if requested > usable:
        log.info(
            f"data.num_workers={requested}: {shards} training shards for {world} process(es); using {usable} loader "
            "worker(s), one per shard at most"
        )
        return usable
    return requested

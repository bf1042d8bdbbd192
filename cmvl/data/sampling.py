"""Training order: shuffle images, not rows, so the rows (questions, captions) of one image come out together.

A batch of 32 VQA questions then holds ~6–7 images instead of ~32 (VQA v2 and the shapes world have ~5 questions
per image), and the collator decodes and the model encodes each image once (`image_index` maps rows to images).
An image with many rows (Visual Genome: ~16 questions, Sort-of-CLEVR-style data: 20) would fill a batch with 2–3
images, and training on such batches was seen to collapse to one answer per question template: `max_rows_per_image`
caps what one image puts into a batch and moves its other rows to later batches of the same epoch.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler


def _world() -> tuple[int, int]:
    """(world size, rank) of the process group, or (1, 0) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ImageGroupedSampler(DistributedSampler):
    """Each epoch: the images in a seeded random order (a pure function of `seed` and the epoch, so a resumed run
    replays it exactly), each image's rows consecutively in table order.

    The epoch's sequence is cut into global batches of `world size × batch_size` rows; rank r takes the r-th
    `batch_size` rows of each. So the global batches, and with a mean loss the averaged gradients, are the same on
    1 process with batch B as on N processes with batch B/N: a run can move between machines of different sizes
    and stay comparable. The rows after the last full global batch wait for another epoch's shuffle (the loader
    drops incomplete batches anyway), so every rank runs the same number of steps. It is a `DistributedSampler` so
    that Lightning uses it as it is instead of wrapping it; Lightning calls `set_epoch`. `max_rows_per_image` caps
    the rows of one image in a global batch (so in each rank's batch too, and the same on any number of processes).

    Stateful (`state_dict`: epoch and rows yielded) for `StatefulDataLoader`: a resumed run's loader is rebuilt
    before Lightning sets the epoch again, so the epoch has to come from the checkpoint.
    """

    def __init__(
        self,
        dataset: Dataset,
        image_ids: np.ndarray,
        *,
        seed: int,
        batch_size: int = 1,
        max_rows_per_image: int | None = None,
    ) -> None:
        """`image_ids`: one per row; distinct ids per row (``np.arange``) give a plain row-level shuffle.
        `max_rows_per_image`: at most this many rows of one image in a global batch (None: no cap)."""
        world, rank = _world()
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size, self.max_rows_per_image = batch_size, max_rows_per_image
        self.num_samples = len(dataset) // (world * batch_size) * batch_size  # rows per rank and epoch
        self.total_size = self.num_samples * world
        image_ids = np.asarray(image_ids)
        if len(image_ids) != len(dataset):
            raise ValueError(f"{len(image_ids)} image ids for {len(dataset)} rows")
        self.rows_by_image = np.argsort(image_ids, kind="stable")  # rows of image k: rows_by_image[start[k]:start[k+1]]
        sorted_ids = image_ids[self.rows_by_image]
        self.starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1], True])
        self.yielded = 0
        # The loader's own generator (`loader_generator`): the loader draws its workers' base seed from it when an
        # epoch's iterator starts. Reseeded from (seed, epoch), so worker seeds are a function of the epoch and no
        # loader ever draws from the global RNG, whose stream a resumed run restores exactly (RNGStateCallback).
        self.loader_generator = torch.Generator()
        self._seed_loader_generator()
        self._resume: tuple[int, int] | None = None  # (epoch, rows already yielded) from a checkpoint

    def _seed_loader_generator(self) -> None:
        self.loader_generator.manual_seed(int(np.random.SeedSequence((self.seed, self.epoch)).generate_state(1)[0]))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._seed_loader_generator()

    @property
    def rows_per_image(self) -> np.ndarray:
        """How many rows each image has."""
        return np.diff(self.starts)

    @property
    def cap_acts(self) -> bool:
        """Some image has more rows than `max_rows_per_image`, so the cap changes the order."""
        return self.max_rows_per_image is not None and int(self.rows_per_image.max()) > self.max_rows_per_image

    def order(self, epoch: int) -> np.ndarray:
        """All rows of this epoch, image after image (before the split across ranks), with at most
        `max_rows_per_image` rows of one image in each global batch."""
        groups = np.random.default_rng((self.seed, epoch)).permutation(len(self.starts) - 1)
        images = [self.rows_by_image[self.starts[g] : self.starts[g + 1]] for g in groups]
        if not self.cap_acts:  # the cap cannot bind: the plain order, without the per-batch walk below
            return np.concatenate(images)
        return np.concatenate(
            _cap_rows_per_batch(images, batch_rows=self.num_replicas * self.batch_size, cap=self.max_rows_per_image)
        )

    def __iter__(self):
        global_batches = self.order(self.epoch)[: self.total_size].reshape(-1, self.num_replicas, self.batch_size)
        mine = global_batches[:, self.rank].reshape(-1).tolist()
        # A checkpoint taken at an epoch's last batch resumes into the next epoch (Lightning sets it after the
        # state is loaded): the saved position belongs to the saved epoch only.
        resume_epoch, resume_at = self._resume or (self.epoch, 0)
        self.yielded, self._resume = (resume_at if resume_epoch == self.epoch else 0), None
        for row in mine[self.yielded :]:
            self.yielded += 1
            yield row

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["yielded"]))
        self._seed_loader_generator()


def _cap_rows_per_batch(images: list[np.ndarray], *, batch_rows: int, cap: int) -> list[np.ndarray]:
    """The rows of `images` (each image's rows, images in epoch order) as consecutive runs such that each batch of
    `batch_rows` rows holds at most `cap` rows of one image. Each batch first takes the rows that earlier batches
    had to leave out (oldest first), then the next images; an image's rows over the cap wait for the next batch.
    Nothing is dropped, and rows keep their image's order. When no image has more than `cap` rows the result is
    the plain order (a batch only defers the rows of the one image cut at its end, which the next batch takes
    first). Only at the epoch's end, when the rows left come from too few images to fill a batch within the cap,
    does a batch hold more: the rows left then come `cap` at a time, image after image (they are also the rows
    most likely to fall in the tail that waits for another epoch's order)."""
    runs: list[np.ndarray] = []
    waiting: deque[np.ndarray] = deque()  # rows that earlier batches left out, one entry per image, oldest first
    fresh = deque(images)
    while waiting or fresh:
        room, left_over = batch_rows, []
        # An image is in `waiting` or still in `fresh`, never both, so it appears once per batch.
        for _ in range(len(waiting)):
            if room == 0:
                break
            room = _take(waiting.popleft(), room, cap, runs, left_over)
        while room and fresh:
            room = _take(fresh.popleft(), room, cap, runs, left_over)
        # The ones this batch did not reach stay ahead of those it cut. A batch left with room (the epoch's last
        # images) is topped up by the next pass, which breaks the cap there only.
        waiting.extend(left_over)
    return runs


def _take(rows: np.ndarray, room: int, cap: int, runs: list[np.ndarray], left_over: list[np.ndarray]) -> int:
    """Put up to `min(cap, room)` of an image's `rows` into the batch (`runs`), the rest into `left_over`; returns
    the batch's room left."""
    take = min(cap, room, len(rows))
    runs.append(rows[:take])
    if take < len(rows):
        left_over.append(rows[take:])
    return room - take


class ShardSampler(DistributedSampler):
    """Evaluation order: rank r scores the contiguous rows [r·N/W, (r+1)·N/W) in table order, nothing padded or
    repeated (Lightning's own `DistributedSampler` repeats rows to even out the ranks, which a metric would count
    twice). Gathered rank after rank, the rows come back in table order, so every metric on W processes equals
    the one-process metric. Ranks may run one batch more or fewer; evaluation steps hold no collective operation
    (metrics synchronise once, at `compute`)."""

    def __init__(self, dataset: Dataset) -> None:
        world, rank = _world()
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False, drop_last=False)
        self.begin, self.end = len(dataset) * rank // world, len(dataset) * (rank + 1) // world
        self.num_samples = self.end - self.begin

    def __iter__(self):
        return iter(range(self.begin, self.end))

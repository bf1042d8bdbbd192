"""`MultiTaskLoader`: batches of several tasks, one task per batch, in a seeded order, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torchdata.stateful_dataloader import StatefulDataLoader

from cmvl.batch import Batch


class _EpochForwarder:
    """Lightning starts each epoch by calling `loader.sampler.set_epoch(epoch)`; this passes it on to every task's
    sampler, so each task's shuffle changes per epoch exactly as in a single-task run."""

    def __init__(self, owner: MultiTaskLoader) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class MultiTaskLoader:
    """Draws each step's batch from one task's loader, by a rule (see `MultiTask`):

    - `proportional`: every task's batches exactly once per epoch, interleaved in a random order;
    - `round_robin`: tasks in turn; a task whose loader runs out starts it again;
    - `weighted`: a random task per step with probability ∝ weight.

    An epoch is as many steps as all tasks' batches together. The order is a pure function of (seed, epoch), and
    the state (epoch, steps yielded, the state of every task loader started this epoch) goes into checkpoints,
    so a resumed run continues with the very batches an uninterrupted run would have drawn.
    """

    def __init__(
        self, loaders: dict[str, StatefulDataLoader], *, sampling: str, weights: dict[str, float], seed: int
    ) -> None:
        self.loaders, self.names = loaders, list(loaders)
        self.sampling, self.seed = sampling, seed
        self.weights = np.array([weights[n] for n in self.names], dtype=np.float64)
        self.sampler = _EpochForwarder(self)
        self.epoch, self.yielded = 0, 0
        self.started: set[str] = set()  # task loaders iterated in this epoch
        self._resume: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for loader in self.loaders.values():
            loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def schedule(self, epoch: int) -> np.ndarray:
        """The task (index into `names`) of every step of `epoch`."""
        lengths = np.array([len(self.loaders[n]) for n in self.names])
        rng = np.random.default_rng((self.seed, epoch, 0x7A5C))
        if self.sampling == "round_robin":
            return np.arange(lengths.sum()) % len(self.names)
        if self.sampling == "weighted":
            return rng.choice(len(self.names), size=int(lengths.sum()), p=self.weights / self.weights.sum())
        return rng.permutation(np.repeat(np.arange(len(self.names)), lengths))

    def __iter__(self) -> Iterator[Batch]:
        schedule = self.schedule(self.epoch)
        resume, self._resume = self._resume, None
        start = 0
        if resume is not None and resume["epoch"] == self.epoch:
            start = resume["yielded"]
            for name, state in resume["loaders"].items():
                self.loaders[name].load_state_dict(state)
        self.yielded, self.started = start, set(resume["loaders"]) if start else set()
        iterators: dict[str, Iterator] = {}
        for task in schedule[start:]:
            name = self.names[task]
            if name not in iterators:
                iterators[name] = iter(self.loaders[name])  # resumes where a loaded state left off
                self.started.add(name)
            try:
                batch = next(iterators[name])
            except StopIteration:  # round-robin / weighted: this task's data ran out first; go round again
                iterators[name] = iter(self.loaders[name])
                batch = next(iterators[name])
            self.yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "yielded": self.yielded,
            "loaders": {name: self.loaders[name].state_dict() for name in sorted(self.started)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self._resume = {"epoch": self.epoch, "yielded": int(state["yielded"]), "loaders": dict(state["loaders"])}

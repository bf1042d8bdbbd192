"""Dynamic batching: requests wait in a bounded queue; one worker thread takes the first waiting request, collects
more until it holds `max_batch_size` or `max_wait_ms` have passed since it took the first, answers them in one call
and hands each answer back to the event loop that awaits it.

The queue is the standard library's thread-safe `queue.Queue` (an `asyncio.Queue` may only be used from its own
loop's thread); the event loop only ever puts without blocking, so a full queue is an immediate `QueueFull`
(503) and never an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
_STOP = object()


class QueueFull(Exception):
    """The queue holds `max_queue` waiting requests already."""


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class BatchQueue(Generic[Item]):
    """`await submit(item)` → `answer([...items])`'s answer for it. `answer` runs on the worker thread only, one
    batch at a time, and returns one answer per item (an exception it raises fails the whole batch);
    `on_batch(size)` is told each batch's size."""

    def __init__(
        self,
        answer: Callable[[list[Item]], Sequence[Any]],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self.answer = answer
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self.waiting: queue.Queue = queue.Queue(maxsize=max_queue)
        self.worker = threading.Thread(target=self._work, name="cmvl-serve-batcher", daemon=True)

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        """Answers what is queued, then ends the worker (called once no new request can arrive)."""
        if self.worker.is_alive():
            self.waiting.put(_STOP)
            self.worker.join()

    def depth(self) -> int:
        return self.waiting.qsize()

    async def submit(self, item: Item) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            self.waiting.put_nowait(_Waiting(item, future, loop))
        except queue.Full:
            raise QueueFull(f"{self.waiting.maxsize} requests are waiting already") from None
        return await future

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self.waiting.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self.waiting.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            self._answer(batch)

    def _answer(self, batch: list[_Waiting]) -> None:
        self.on_batch(len(batch))
        try:
            answers = list(self.answer([w.item for w in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for a batch of {len(batch)}")
        except Exception as err:  # noqa: BLE001 (each waiting request gets the error: a 500, and the worker goes on)
            for w in batch:
                _hand_back(w, None, err)
            return
        for w, answer in zip(batch, answers):
            _hand_back(w, answer, None)


def _hand_back(waiting: _Waiting, answer: Any, error: BaseException | None) -> None:
    try:
        waiting.loop.call_soon_threadsafe(_settle, waiting.future, answer, error)
    except RuntimeError:  # the loop has closed: nobody awaits the answer any more
        pass


def _settle(future: asyncio.Future, answer: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(answer)

"""POST /explain's own threads: an explanation (a backward pass, the overlay drawn) runs in one of `max_explains`
threads of its own, never in the threadpool the other routes decode their requests in, and at most `max_explains`
are admitted at a time (running, or waiting for the model): one more is 503 at once. The client waits at most
`explain_timeout_s` (504). A thread cannot be stopped, so a timed-out explanation keeps its slot until it has
finished: slow ones fill the slots and are refused, they do not pile up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from cmvl.serve.limits import Refused


class ExplainSlots:
    def __init__(self, max_explains: int, timeout_s: float) -> None:
        self.max_explains, self.timeout_s = max_explains, timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_explains, thread_name_prefix="cmvl-serve-explain")
        self._held = 0
        self._lock = threading.Lock()

    def held(self) -> int:
        """Explanations admitted and not finished (a timed-out one included)."""
        with self._lock:
            return self._held

    async def run(self, explain: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """`explain(*args)` in a slot: 503 when every slot is held, 504 after `timeout_s` (its errors are raised)."""
        with self._lock:
            if self._held >= self.max_explains:
                raise Refused(
                    503, f"{self._held} explanations are running; the limit is {self.max_explains}; retry later",
                    limit="max_explains",
                )  # fmt: skip
            self._held += 1
        try:
            future = self._pool.submit(explain, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)  # when the thread is done, not when the client stops waiting
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout_s)
        except TimeoutError:
            raise Refused(
                504, f"the explanation took longer than {self.timeout_s:g} s; the limit is explain_timeout_s",
                limit="explain_timeout_s",
            ) from None  # fmt: skip

    def _release(self, _: Future | None = None) -> None:
        with self._lock:
            self._held -= 1

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

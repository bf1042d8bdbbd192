"""Progress reporting for long work: a rich bar on a terminal, a few plain lines otherwise (CI, logs)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from cmvl.log import get_logger

T = TypeVar("T")
log = get_logger(__name__)


def track(items: Iterable[T], *, total: int, description: str) -> Iterator[T]:
    """`items`, reporting progress (nothing with verbosity=quiet)."""
    if not log.isEnabledFor(logging.INFO):
        yield from items
        return
    if sys.stderr.isatty():
        from rich.progress import track as rich_track

        yield from rich_track(items, total=total, description=description, transient=True)
        return
    step = max(1, total // 4)
    for done, item in enumerate(items, start=1):
        yield item
        if done % step == 0 or done == total:
            log.info(f"{description} {done}/{total}")

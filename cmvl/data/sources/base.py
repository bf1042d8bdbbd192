"""A dataset source turns official files on disk into annotation tables (see DESIGN.md, "The flow")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import pyarrow as pa

from cmvl.errors import ConfigError


class Source(ABC):
    """Reads one dataset. `kinds` lists the annotation tables it provides (`qa`, `captions`, ...)."""

    name: str = "source"
    kinds: frozenset[str] = frozenset()
    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(self, *, split: str = "val") -> None:
        self.split = split  # the split `cmvl eval` scores

    @property
    @abstractmethod
    def image_root(self) -> Path:
        """Folder that the `image` column of every table is relative to."""

    @abstractmethod
    def _read(self, kind: str, split: str) -> pa.Table: ...

    def table(self, kind: str, split: str) -> pa.Table:
        if kind not in self.kinds:
            raise ConfigError(
                f"dataset '{self.name}' has no '{kind}' annotations (it has: {', '.join(sorted(self.kinds))})"
            )
        if split not in self.splits:
            raise ConfigError(f"dataset '{self.name}' has no split '{split}' (choices: {', '.join(self.splits)})")
        return self._read(kind, split)

"""Matplotlib without a display, and figures saved atomically as PNG (a report never holds a half-written image)."""

from __future__ import annotations

import os
from typing import Any

from cmvl.atomic_file import atomic_write


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend (no display needed; safe in workers, CI and SLURM jobs)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike, *, dpi: int = 100) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    pyplot().close(fig)

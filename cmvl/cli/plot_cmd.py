"""`cmvl plot RUN_DIR [--out PNG]`: training curves of a run."""

from __future__ import annotations

import argparse
from pathlib import Path


def plot_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="cmvl plot",
        description="Draw a run's training loss, validation metrics and learning rate from its metrics.csv.",
    )
    parser.add_argument("run_dir", type=Path, help="a run directory (outputs/<date>/<time> or a sweep job's)")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: RUN_DIR/curves.png)")
    options = parser.parse_args(args)
    from cmvl.training.curves import plot_curves

    print(f"curves: {plot_curves(options.run_dir, options.out)}")

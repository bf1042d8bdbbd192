"""`cmvl plot run=DIR [out=PNG]`: training curves of a run."""

from __future__ import annotations

from cmvl.cli.args import Option, Spec, parse, path, wants_help

PLOT = Spec(
    "plot",
    "Draws a run's training loss, validation metrics and learning rate from its metrics.csv.",
    (
        Option("run", "a run directory (outputs/<date>/<time> or a sweep job's)", path, metavar="DIR"),
        Option("out", "PNG to write (default: <run>/curves.png)", path, None, "PNG"),
    ),
    positional="run",
)


def plot_command(args: list[str]) -> None:
    if wants_help(args):
        print(PLOT.help())
        return
    parsed = parse(PLOT, args)
    from cmvl.training.curves import plot_curves

    print(f"curves: {plot_curves(parsed['run'], parsed['out'])}")

"""Sweep plots: the optimised metric against each swept parameter, and (Optuna) the optimisation history."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from cmvl.config.resolvers import safe_dirname
from cmvl.figures import pyplot, save_png
from cmvl.sweeps.report import SweepReport

FIGSIZE = (6.0, 4.0)  # inches; 600×400 px at the default dpi


def _numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot_parameter(report: SweepReport, key: str, path: Path) -> None:
    """One point per finished job: the metric against the parameter's value (log axis for a positive numeric
    parameter spanning more than a decade, integer ticks for an integer one; categories side by side otherwise).
    Where seeds were swept, each value's mean ± std over its jobs is drawn beside the points: the spread."""
    plt = pyplot()
    jobs = [j for j in report.jobs if j.value is not None and key in j.params]
    values = [j.params[key] for j in jobs]
    ys = [j.value for j in jobs]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    numbers = _numbers(values)
    if numbers is not None:
        xs = numbers
        if min(numbers) > 0 and max(numbers) / min(numbers) > 10:
            ax.set_xscale("log")
        if all(_is_integer(v) for v in values):
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        categories = sorted(set(values))
        xs = [categories.index(v) for v in values]
        ax.set_xticks(range(len(categories)), categories, rotation=20)
    ax.scatter(xs, ys, alpha=0.6 if key != "seed" and "seed" in report.swept else 1.0)
    if key != "seed" and "seed" in report.swept:
        _draw_spread(ax, xs, ys)
    if report.best is not None and key in report.best.params:
        best_x = (
            float(report.best.params[key])
            if numbers is not None
            else sorted(set(values)).index(report.best.params[key])
        )
        ax.scatter([best_x], [report.best.value], s=120, facecolors="none", edgecolors="red", label="best")
        ax.legend()
    ax.set_xlabel(key)
    ax.set_ylabel(report.metric)
    ax.set_title(f"{report.metric} vs {key} ({len(jobs)} jobs)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def _is_integer(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _draw_spread(ax, xs: list[float], ys: list[float]) -> None:
    """Mean ± sample std of the jobs at each x (the seeds of a value, and of any other parameter at that value)."""
    by_x: dict[float, list[float]] = {}
    for x, y in zip(xs, ys):
        by_x.setdefault(x, []).append(y)
    points = sorted(by_x.items())
    means = [statistics.fmean(v) for _, v in points]
    stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in points]
    ax.errorbar([x for x, _ in points], means, yerr=stds, fmt="_", color="black", capsize=6, label="mean ± std")


def plot_history(report: SweepReport, path: Path) -> None:
    """Each trial's value in trial order and the best value so far."""
    plt = pyplot()
    jobs = sorted((j for j in report.jobs if j.value is not None and j.number is not None), key=lambda j: j.number)
    xs = [j.number for j in jobs]
    ys = [j.value for j in jobs]
    better = max if report.mode == "max" else min
    running, best = [], -math.inf if report.mode == "max" else math.inf
    for y in ys:
        best = better(best, y)
        running.append(best)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.scatter(xs, ys, label="trial")
    ax.step(xs, running, where="post", color="red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(report.metric)
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def plot_sweep(report: SweepReport, out_dir: Path) -> list[Path]:
    """`<out_dir>/<parameter>.png` for each swept parameter, `history.png` for an Optuna search; the paths."""
    written = []
    if not any(j.value is not None for j in report.jobs):
        return written
    for key in report.swept:
        written.append(out_dir / f"{safe_dirname(key)}.png")
        plot_parameter(report, key, written[-1])
    if report.optuna:
        written.append(out_dir / "history.png")
        plot_history(report, written[-1])
    return written

"""Training curves from a run's metrics.csv: training loss, validation metrics and learning rate, one PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from cmvl.errors import UserError
from cmvl.figures import pyplot, save_png
from cmvl.run_files import CURVES_PNG, METRICS_CSV


def read_metrics(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Column → (x, value) points: x is the epoch for validation metrics, the global step otherwise (an epoch mean
    such as `train/loss_epoch` sits at its epoch's last step)."""
    series: dict[str, list[tuple[float, float]]] = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                for key, text in row.items():
                    if key in ("epoch", "step") or not text:
                        continue
                    x_column = "epoch" if str(key).startswith("val/") else "step"
                    value, x = _number(text, path, reader.line_num, key), row.get(x_column)
                    if x and math.isfinite(value):
                        series.setdefault(str(key), []).append((_number(x, path, reader.line_num, x_column), value))
    except (OSError, UnicodeDecodeError, csv.Error) as err:  # binary garbage, NUL bytes, an unreadable file
        raise UserError(f"{path}: not a readable metrics CSV ({type(err).__name__}: {str(err)[:120]})") from None
    return series


def _number(text: object, path: Path, line: int, column: str) -> float:
    """A cell as a float, or one line naming the file, line and column (a row with more cells than the header
    puts the extra ones in a list under the column None)."""
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(
            f"{path} line {line}, column {column}: {str(text)[:40]!r} is not a number (a metrics.csv that a "
            "logger=csv run wrote holds only numbers; fix or delete the file)"
        ) from None


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draws `<run_dir>/curves.png` (or `out`): training loss by step, validation metrics by epoch, learning rate
    by step. Raises `UserError` when the run has no metrics.csv."""
    metrics_csv = Path(run_dir) / METRICS_CSV
    if not metrics_csv.is_file():
        raise UserError(f"{metrics_csv}: no such file (plots need a run directory trained with logger=csv)")
    series = read_metrics(metrics_csv)
    panels = [
        ("training loss", "step", [k for k in series if k.startswith("train/")]),
        ("validation", "epoch", [k for k in series if k.startswith("val/")]),
        ("learning rate", "step", [k for k in series if k.startswith("lr-")]),
    ]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise UserError(f"{metrics_csv}: no training, validation or learning-rate values logged yet")
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.0, 3.0 * len(panels)), squeeze=False)
    for ax, (title, xlabel, keys) in zip(axes[:, 0], panels):
        for key in keys:
            xs, ys = zip(*series[key])
            style = {"marker": "o", "markersize": 3} if xlabel == "epoch" or key.endswith("_epoch") else {}
            ax.plot(xs, ys, label=key, **style)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / CURVES_PNG
    save_png(fig, path)
    return path

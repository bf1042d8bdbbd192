"""A Hydra callback that prints and writes one table of the jobs' final metrics when a sweep ends."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cmvl.training.train import SUMMARY_FILE


def collect_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory under `sweep_dir` that has an overrides file."""
    rows = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.exists():
            continue
        overrides = [line[2:].strip() for line in overrides_file.read_text().splitlines() if line.startswith("- ")]
        summary_file = job_dir / SUMMARY_FILE
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        row = {"job": job_dir.name, "overrides": " ".join(overrides), "status": "done" if summary else "failed"}
        row["monitor"] = summary.get("monitor")
        row["best"] = summary.get("best_score")
        row["epochs"] = summary.get("epochs")
        row["train_seconds"] = summary.get("train_seconds")
        row["samples/s"] = summary.get("train_samples_per_second")
        row["params"] = summary.get("parameters")
        for key, value in (summary.get("best_epoch_metrics") or {}).items():
            if key not in ("epoch", "step"):
                row[key.removeprefix("val/")] = value
        rows.append(row)
    return rows


FIXED_COLUMNS = ["job", "overrides", "best", "epochs", "train_seconds", "samples/s", "params", "status"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and abs(value) <= 1.0:
        return f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed columns, then the best epoch's validation metrics (overall and per answer type, etc.)."""
    metric_columns = [k for r in rows for k in r if k not in FIXED_COLUMNS and k not in ("monitor", "best")]
    headers = FIXED_COLUMNS + list(dict.fromkeys(metric_columns))
    cells = [[_cell(r.get(h)) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = collect_sweep(sweep_dir)
        if not rows:
            return
        monitor = next((r["monitor"] for r in rows if r["monitor"]), "best")
        table = format_table(rows)
        print(f"\nsweep summary ({monitor}), {sweep_dir}:\n{table}")
        (sweep_dir / "summary.txt").write_text(f"{monitor}\n{table}\n")
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            fields = list(dict.fromkeys(k for r in rows for k in r))
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

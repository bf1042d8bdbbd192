"""The Hydra callback that writes and prints the sweep report when a sweep (grid, Optuna, submitit) ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from cmvl.sweeps.report import write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            _, text = write_report(sweep_dir)
            print(f"\n{text}\nreport: {sweep_dir}/report.txt, report.csv, plots/")

"""The Hydra callback that writes and prints the sweep report when a sweep (grid, Optuna, submitit) ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cmvl.errors import UserError, one_line
from cmvl.log import get_logger

log = get_logger(__name__)


class SweepReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from cmvl.sweeps.report import write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            _, text = write_report(sweep_dir)
        except UserError as err:  # a job's file someone broke: the sweep itself ran; say why there is no report
            log.error(f"no sweep report: {one_line(err)}")
            return
        print(f"\n{text}\nreport: {sweep_dir}/report.txt, report.csv, plots/")

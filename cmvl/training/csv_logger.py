"""Lightning's CSV logger, except that a resumed run keeps the metrics the run logged before it stopped."""

from __future__ import annotations

import csv
import os

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from cmvl.atomic_file import atomic_write
from cmvl.training.lightning_compat import ExistingMetricsFileWriter, csv_logger_writer


class _KeepingWriter(ExistingMetricsFileWriter):
    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self._keep_before_step = keep_before_step
        super().__init__(log_dir=log_dir)

    def on_existing_metrics_file(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        if self._keep_before_step is None:  # a fresh run in a used folder starts a fresh file, as Lightning does
            os.remove(self.metrics_file_path)
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        kept = [row for row in rows if row.get("step") and int(float(row["step"])) < self._keep_before_step]
        with atomic_write(self.metrics_file_path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = keys  # later rows are appended under the same header (widened if new keys come)


class ResumableCSVLogger(CSVLogger):
    """`metrics.csv` like Lightning's `CSVLogger`; after `resume_from(step)` the rows logged before that step stay
    and later ones (which the resumed run logs again) go, where Lightning's logger would delete the whole file."""

    _resume_step: int | None = None

    def resume_from(self, step: int) -> None:
        self._resume_step = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        return csv_logger_writer(self, lambda: _KeepingWriter(self.log_dir, keep_before_step=self._resume_step))

"""The sweep report: every job of a multirun directory in one table sorted by the optimised metric, the override
line that reproduces the best job, `report.csv`, and plots (the metric against each swept parameter; for an
Optuna search the optimisation history). Jobs that differ only in `seed` are also pooled into one row per
configuration, mean ± std with the count (cmvl/sweeps/seeds.py). Written when a sweep ends and by
`cmvl sweep report DIR`."""

from __future__ import annotations

import csv
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cmvl.atomic_file import atomic_write
from cmvl.errors import UserError
from cmvl.run_files import SUMMARY_FILE
from cmvl.sweeps.naming import JOB_NAME_EXCLUDED

REPORT_TABLE, REPORT_CSV, PLOTS_DIR = "report.txt", "report.csv", "plots"


@dataclass
class Job:
    directory: Path
    number: int | None  # Hydra's job number in the latest run of the sweep (the Optuna trial number)
    overrides: list[str]
    summary: dict[str, Any]
    status: str  # done | unfinished (checkpoints, no summary: re-running resumes it) | failed
    sweeper: str  # the sweeper's class (Hydra's BasicSweeper for a grid, OptunaSweeper, ...)

    @property
    def params(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.overrides if "=" in o)

    @property
    def value(self) -> float | None:
        """The job's optimised metric; None when it logged none (or a summary holds no number there)."""
        value = self.summary.get("optimized_value", self.summary.get("best_score"))
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None  # NaN, or the ±inf a job without a metric returns to the sweeper
        return float(value)


@dataclass
class SweepReport:
    sweep_dir: Path
    jobs: list[Job]  # best first; jobs without a value last
    metric: str
    mode: str  # max | min
    optuna: bool

    @property
    def swept(self) -> list[str]:
        """The parameters whose values differ between jobs."""
        keys = list(dict.fromkeys(k for job in self.jobs for k in job.params))
        return [k for k in keys if len({job.params.get(k) for job in self.jobs}) > 1]

    @property
    def best(self) -> Job | None:
        return self.jobs[0] if self.jobs and self.jobs[0].value is not None else None

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for rank, job in enumerate(self.jobs, start=1):
            best_epoch = _section(job.summary, "best_epoch_metrics")
            row: dict[str, Any] = {"rank": rank if job.value is not None else None, "job": job.directory.name}
            row.update({key: job.params.get(key) for key in self.swept})
            row[self.metric] = job.value
            row["best_epoch"] = best_epoch.get("epoch")
            row["epochs"] = job.summary.get("epochs")
            row["wall_s"] = job.summary.get("train_seconds")
            row["status"] = job.status
            row["overrides"] = " ".join(job.overrides)
            rows.append(row)
        return rows


def _job(job_dir: Path) -> Job | None:
    hydra_dir = job_dir / ".hydra"
    if not (hydra_dir / "overrides.yaml").is_file():
        return None
    overrides = _read_yaml(hydra_dir / "overrides.yaml", list) or []
    hydra_yaml = hydra_dir / "hydra.yaml"
    hydra_cfg = (_read_yaml(hydra_yaml, dict) if hydra_yaml.is_file() else None) or {}
    hydra_cfg = _section(hydra_cfg, "hydra")
    number = _section(hydra_cfg, "job").get("num")
    sweeper = str(_section(hydra_cfg, "sweeper").get("_target_", ""))
    try:
        summary = json.loads((job_dir / SUMMARY_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        summary = None  # a job that stopped before writing it (writes are atomic: no half-written summary)
    job = Job(job_dir, number if isinstance(number, int) else None, [str(o) for o in overrides], {}, "", sweeper)
    if isinstance(summary, dict):
        # A finished job without a metric (e.g. shorter than one epoch: no validation ran) failed as a sweep job.
        job.summary = summary
        job.status = "done" if job.value is not None else "failed"
    else:
        job.status = "unfinished" if any((job_dir / "checkpoints").glob("*.ckpt")) else "failed"
    return job


def _read_yaml(path: Path, kind: type) -> Any:
    """A job's YAML file (Hydra's), refused in one line when it is not YAML of the expected kind."""
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        message = f"{path}: not a readable YAML file ({reason[:150]}); fix or delete that job directory"
        raise UserError(message) from None
    if value is not None and not isinstance(value, kind):
        raise UserError(
            f"{path}: holds a {type(value).__name__}, not the {kind.__name__} Hydra writes; fix or delete that job "
            "directory"
        )
    return value


def _section(node: dict[str, Any], key: str) -> dict[str, Any]:
    value = node.get(key)
    return value if isinstance(value, dict) else {}


def collect(sweep_dir: Path) -> SweepReport:
    """Every job directory under `sweep_dir` (any that has Hydra's `.hydra/overrides.yaml`), best first."""
    jobs = [job for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir()) if (job := _job(d)) is not None]
    done = [j.summary for j in jobs if j.summary]
    metric = next((s.get("optimized_metric") or s.get("monitor") for s in done), None) or "value"
    mode = next((s.get("mode") for s in done if s.get("mode")), "max")
    sign = -1.0 if mode == "max" else 1.0
    jobs.sort(key=lambda j: (j.value is None, sign * (j.value or 0.0), j.number if j.number is not None else 1 << 30))
    return SweepReport(sweep_dir, jobs, metric, mode, any("optuna" in j.sweeper.lower() for j in jobs))


def _cell(value: Any, decimals: int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and decimals is not None:
        return f"{value:.{decimals}f}"
    if isinstance(value, str) and len(value) > 8:  # a sampled float (0.0006466422717414558) reads as 0.0006466
        try:
            return f"{float(value):.4g}"
        except ValueError:
            return value
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_table(report: SweepReport) -> str:
    """The rows as aligned text: the swept parameters name each job (the job directory is in report.csv)."""
    rows = report.rows()
    hidden = {"overrides", "job"} if report.swept else {"overrides"}
    headers = [h for h in (rows[0] if rows else {}) if h not in hidden]
    cells = [[_cell(r.get(h), 4 if h == report.metric else None) for h in headers] for r in rows]
    return "\n".join(aligned(headers, cells))


def aligned(headers: list[str], cells: list[list[str]]) -> list[str]:
    """The header line and one line per row, each column padded to its widest cell."""
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    return lines + ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]


def reproduce_line(job: Job) -> str:
    """A single run of the job's configuration (without the search space, which would start a new sweep)."""
    kept = [o for o in job.overrides if o.lstrip("+~").split("=", 1)[0].split("@")[0] not in JOB_NAME_EXCLUDED]
    return " ".join(["cmvl train", *(shlex.quote(o) for o in kept)])


def render(report: SweepReport) -> str:
    lines = [f"sweep {report.sweep_dir}: {len(report.jobs)} jobs, sorted by {report.metric} ({report.mode})"]
    lines.append(format_table(report))
    if report.best is not None:
        lines.append(f"best: {report.metric} = {report.best.value:.6f} ({report.best.directory.name})")
        lines.append(f"reproduce: {reproduce_line(report.best)}")
    from cmvl.sweeps.seeds import format_configurations, pools_seeds

    if pools_seeds(report):
        lines += ["", format_configurations(report)]
    return "\n".join(lines)


def write_report(sweep_dir: Path) -> tuple[SweepReport, str]:
    """Writes report.txt, report.csv and plots/*.png into `sweep_dir`; returns the report and its text."""
    report = collect(sweep_dir)
    text = render(report)
    with atomic_write(sweep_dir / REPORT_TABLE) as f:
        f.write(text + "\n")
    rows = report.rows()
    with atomic_write(sweep_dir / REPORT_CSV, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["job"])
        writer.writeheader()
        writer.writerows(rows)
    from cmvl.sweeps.seeds import REPORT_BY_CONFIGURATION_CSV, configuration_rows, pools_seeds

    if pools_seeds(report):
        pooled = configuration_rows(report)
        with atomic_write(sweep_dir / REPORT_BY_CONFIGURATION_CSV, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(pooled[0]))
            writer.writeheader()
            writer.writerows(pooled)
    from cmvl.sweeps.plots import plot_sweep

    plot_sweep(report, sweep_dir / PLOTS_DIR)
    return report, text

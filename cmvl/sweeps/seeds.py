"""Seeds pooled: the jobs of a sweep that differ only in `seed` are one configuration, reported as the mean ± the
sample standard deviation of their metric and how many seeds finished (`cmvl train -m ... seed=0,1,2`)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from cmvl.sweeps.report import Job, SweepReport, _cell, aligned

SEED_KEY = "seed"
REPORT_BY_CONFIGURATION_CSV = "report_by_configuration.csv"


@dataclass
class Configuration:
    """The jobs of one setting of the swept parameters other than `seed`."""

    params: dict[str, str | None]
    jobs: list[Job] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [j.value for j in self.jobs if j.value is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n − 1) over the finished seeds; None with fewer than two."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def wall_s(self) -> float | None:
        times = [t for j in self.jobs if isinstance(t := j.summary.get("train_seconds"), int | float)]
        return statistics.fmean(times) if times else None


def pools_seeds(report: SweepReport) -> bool:
    """Whether the sweep ran some configuration with more than one seed."""
    return SEED_KEY in report.swept and any(len(c.jobs) > 1 for c in configurations(report))


def configurations(report: SweepReport) -> list[Configuration]:
    """One `Configuration` per setting of the swept parameters other than `seed`, best mean first (those without
    a finished seed last)."""
    keys = [k for k in report.swept if k != SEED_KEY]
    groups: dict[tuple[str | None, ...], Configuration] = {}
    for job in report.jobs:
        setting = tuple(job.params.get(k) for k in keys)
        groups.setdefault(setting, Configuration(dict(zip(keys, setting)))).jobs.append(job)
    sign = -1.0 if report.mode == "max" else 1.0
    return sorted(groups.values(), key=lambda c: (c.mean is None, sign * (c.mean or 0.0)))


def configuration_rows(report: SweepReport) -> list[dict[str, Any]]:
    rows = []
    for config in configurations(report):
        row: dict[str, Any] = dict(config.params)
        row[f"{report.metric} mean"] = config.mean
        row["std"] = config.std
        row["seeds"] = f"{len(config.values)}/{len(config.jobs)}"  # finished / run
        row["seed values"] = " ".join(sorted(str(j.params.get(SEED_KEY)) for j in config.jobs))
        row["wall_s mean"] = config.wall_s
        rows.append(row)
    return rows


def format_configurations(report: SweepReport) -> str:
    """The configurations as aligned text: mean ± std over the seeds of each, with the count."""
    lines = [f"by configuration (seeds pooled: mean ± sample std of {report.metric}, seeds finished/run)"]
    rows = configuration_rows(report)
    keys = [k for k in report.swept if k != SEED_KEY]
    headers = [*keys, f"{report.metric} (mean ± std)", "seeds", "wall_s mean"]
    cells = []
    for row in rows:
        mean, std = row[f"{report.metric} mean"], row["std"]
        spread = "" if mean is None else f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")
        wall = row["wall_s mean"]
        cells.append(
            [*(_cell(row[k], None) for k in keys), spread, row["seeds"], "" if wall is None else f"{wall:.0f}"]
        )
    return "\n".join(lines + [f"  {line}" for line in aligned(headers, cells)])  # indented: not the jobs' table

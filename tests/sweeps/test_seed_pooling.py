"""The sweep report pools seeds: jobs that differ only in `seed` are one row, mean ± sample std and the count of
seeds finished; a sweep without seeds has no such section."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cmvl.sweeps.report import collect, write_report
from cmvl.sweeps.seeds import configurations, pools_seeds


def _job(sweep_dir: Path, number: int, overrides: list[str], value: float | None) -> None:
    job = sweep_dir / ",".join(overrides)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {number}\n")
    if value is not None:
        summary = {"optimized_metric": "val/x", "optimized_value": value, "mode": "max", "train_seconds": 10 + number}
        (job / "summary.json").write_text(json.dumps(summary))


def test_jobs_that_differ_only_in_seed_are_one_row_with_mean_std_and_count(tmp_path):
    values = {("1", "0"): 0.5, ("1", "1"): 0.6, ("1", "2"): 0.7, ("2", "0"): 0.2, ("2", "1"): 0.4, ("2", "2"): None}
    for number, ((lr, seed), value) in enumerate(values.items()):
        _job(tmp_path, number, [f"lr={lr}", f"seed={seed}"], value)
    report = collect(tmp_path)
    assert pools_seeds(report)
    first, second = configurations(report)
    assert first.params == {"lr": "1"} and first.mean == pytest.approx(0.6) and first.std == pytest.approx(0.1)
    assert second.params == {"lr": "2"} and second.mean == pytest.approx(0.3) and second.std == pytest.approx(0.02**0.5)
    assert len(second.values) == 2 and len(second.jobs) == 3  # the failed seed is counted as run, not finished
    _, text = write_report(tmp_path)
    pooled = text.split("by configuration", 1)[1].splitlines()
    assert pooled[2].split() == ["1", "0.6000", "±", "0.1000", "3/3", "11"]
    assert pooled[3].split() == ["2", "0.3000", "±", "0.1414", "2/3", "14"]  # wall: mean of 13 and 14 s, rounded
    rows = list(csv.DictReader((tmp_path / "report_by_configuration.csv").open()))
    assert [(r["lr"], r["seeds"], r["seed values"]) for r in rows] == [("1", "3/3", "0 1 2"), ("2", "2/3", "0 1 2")]
    assert (tmp_path / "plots" / "lr.png").is_file() and (tmp_path / "plots" / "seed.png").is_file()


def test_a_sweep_without_repeated_seeds_has_no_pooled_section(tmp_path):
    for number, lr in enumerate(["1", "2"]):
        _job(tmp_path, number, [f"lr={lr}", "seed=0"], 0.1 * number)
    report = collect(tmp_path)
    assert not pools_seeds(report)
    _, text = write_report(tmp_path)
    assert "by configuration" not in text and not (tmp_path / "report_by_configuration.csv").exists()

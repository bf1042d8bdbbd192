"""Malformed files handed to `cmvl plot` and `cmvl sweep report`: one line and exit 2. A sweep job that logged no
metric is reported failed (in one line by the job, `failed` in the report) and hands Optuna its worst value."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cmvl.sweeps import jobs
from cmvl.sweeps.report import collect
from tests.conftest import assert_one_line_error, cli_in_process

GOOD_CSV = "epoch,step,train/loss_step,val/vqa/acc\n0,1,2.5,\n0,3,,0.4\n"
BAD_CSV = {
    "binary-garbage": bytes(range(256)) * 4,
    "nul-bytes": b"epoch,step,train/loss_step\n0,1,\x00\x00\n",
    "non-numeric-value": b"epoch,step,train/loss_step\n0,1,abc\n",
    "non-numeric-step": b"epoch,step,train/loss_step\n0,x,2.5\n",
    "extra-cells": b"epoch,step,train/loss_step\n0,1,2.5,9,9\n",
    "header-only": b"epoch,step,train/loss_step\n",
    "missing-columns": b"a,b\n1,2\n",
    "empty": b"",
}


@pytest.mark.parametrize("name", BAD_CSV)
def test_malformed_metrics_csv_is_one_line(tmp_path, name):
    (tmp_path / "metrics.csv").write_bytes(BAD_CSV[name])
    assert_one_line_error(cli_in_process("plot", f"run={tmp_path}", cwd=tmp_path), "metrics.csv")
    assert not (tmp_path / "curves.png").exists()


def test_missing_or_empty_run_dir_is_one_line(tmp_path):
    assert_one_line_error(cli_in_process("plot", f"run={tmp_path / 'nowhere'}", cwd=tmp_path), "metrics.csv")
    assert_one_line_error(cli_in_process("plot", f"run={tmp_path}", cwd=tmp_path), "metrics.csv")


def test_good_metrics_csv_plots(tmp_path):
    (tmp_path / "metrics.csv").write_text(GOOD_CSV)
    assert cli_in_process("plot", f"run={tmp_path}", cwd=tmp_path).returncode == 0
    assert (tmp_path / "curves.png").is_file()


def _job(sweep: Path, name: str, *, summary: object = None, overrides: str = "- fusion=concat\n") -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(overrides)
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    num: 0\n")
    if summary is not None:
        text = summary if isinstance(summary, str) else json.dumps(summary)
        (job / "summary.json").write_text(text)
    return job


DONE = {"optimized_metric": "val/vqa/acc", "optimized_value": 0.5, "mode": "max", "epochs": 1}
BROKEN_JOB_FILES = {
    "overrides-not-yaml": ("overrides.yaml", "- [unclosed\n"),
    "overrides-a-mapping": ("overrides.yaml", "a: 1\n"),
    "overrides-binary": ("overrides.yaml", b"\xff\xfe\x00garbage"),
    "hydra-not-yaml": ("hydra.yaml", "hydra: [\n"),
    "hydra-a-list": ("hydra.yaml", "- 1\n"),
}


@pytest.mark.parametrize("name", BROKEN_JOB_FILES)
def test_broken_job_file_is_one_line(tmp_path, name):
    sweep = tmp_path / "sweep"
    _job(sweep, "fusion=concat", summary=DONE)
    file, content = BROKEN_JOB_FILES[name]
    path = sweep / "fusion=concat" / ".hydra" / file
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    assert_one_line_error(cli_in_process("sweep", "report", f"dir={sweep}", cwd=tmp_path), file)


@pytest.mark.parametrize(
    "summary",
    ["{broken", "[1, 2]", {"optimized_value": "abc"}, {**DONE, "best_epoch_metrics": [1]}, {**DONE, "mode": 3}],
)
def test_broken_summary_marks_the_job_failed(tmp_path, summary):
    sweep = tmp_path / "sweep"
    _job(sweep, "fusion=film", summary=DONE, overrides="- fusion=film\n")
    _job(sweep, "fusion=concat", summary=summary)
    result = cli_in_process("sweep", "report", f"dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    if not (isinstance(summary, dict) and summary.get("optimized_value") == 0.5):
        assert {job.directory.name: job.status for job in collect(sweep).jobs}["fusion=concat"] == "failed"


def test_missing_and_empty_sweep_dir_is_one_line(tmp_path):
    assert_one_line_error(cli_in_process("sweep", "report", f"dir={tmp_path / 'nowhere'}", cwd=tmp_path), "nowhere")
    assert_one_line_error(cli_in_process("sweep", "report", f"dir={tmp_path}", cwd=tmp_path), "no sweep jobs")


def test_job_without_a_metric_is_reported_failed(tmp_path, monkeypatch, capsys):
    no_metric = {"optimized_metric": "val/vqa/acc", "optimized_value": None, "mode": "max", "epochs": 0}
    monkeypatch.setattr(jobs, "in_sweep", lambda: True)
    assert jobs.sweeper_value(no_metric, tmp_path / "lr=0.1") == -math.inf  # Optuna's worst, not None
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("cmvl: error: job lr=0.1 failed: it logged no val/vqa/acc")
    assert jobs.sweeper_value({**no_metric, "mode": "min"}, tmp_path / "lr=0.1") == math.inf
    assert jobs.sweeper_value(DONE, tmp_path) == 0.5

    sweep = tmp_path / "sweep"
    _job(sweep, "fusion=film", summary=DONE, overrides="- fusion=film\n")
    _job(sweep, "fusion=concat", summary=no_metric)
    report = collect(sweep)
    assert [(j.directory.name, j.status) for j in report.jobs] == [("fusion=film", "done"), ("fusion=concat", "failed")]

"""Sweeps through the real CLI: Optuna search, a grid sweep interrupted and re-run, submitit_local; the report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cmvl.config.preflight import _parse_search_space, _split_sweeps
from cmvl.errors import ConfigError
from cmvl.sweeps.report import collect, reproduce_line
from tests.conftest import TINY_TRAINING, TINY_WORLD, cli_in_process, run_cli

TINY = [*TINY_WORLD, *TINY_TRAINING, "trainer.max_epochs=1"]
TINY_FIXED_EPOCHS = [a for a in TINY_TRAINING if not a.startswith("trainer.max_epochs=")]


def _report_rows(sweep_dir: Path) -> list[str]:
    lines = (sweep_dir / "report.txt").read_text().splitlines()
    return [line for line in lines[2:] if line[:1].isdigit()]


def _assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and (size is None or image.size == size), (path, image.size)


def test_optuna_search_runs_its_trials_and_reports_them(tmp_path, cache_dir):
    sweep_dir = tmp_path / "optuna"
    result = cli_in_process(  # the basic launcher runs the trials in the sweep's own process
        "train", "hparams_search=vqa_optuna", "hydra.sweeper.n_trials=3", *TINY, f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_report_rows(sweep_dir)) == 3
    report = collect(sweep_dir)
    assert report.optuna and report.metric == "val/vqa/acc" and len(report.jobs) == 3
    values = [job.value for job in report.jobs]
    assert values == sorted(values, reverse=True) and all(job.status == "done" for job in report.jobs)
    # Each trial's value is what its run logged at its best epoch (the sweeper optimised those numbers).
    for job in report.jobs:
        summary = json.loads((job.directory / "summary.json").read_text())
        assert job.value == summary["best_epoch_metrics"]["val/vqa/acc"]
    assert "fusion" in report.swept and "optim.optimizer.lr" in report.swept
    _assert_png(sweep_dir / "plots" / "history.png", (600, 400))
    _assert_png(sweep_dir / "plots" / "fusion.png", (600, 400))
    assert "hparams_search" not in reproduce_line(report.best)

    again = cli_in_process("sweep", "report", f"dir={sweep_dir}", cwd=tmp_path)
    assert again.returncode == 0 and "reproduce: cmvl train" in again.stdout


def test_a_typo_in_optimized_metric_stops_the_sweep_before_its_first_trial(tmp_path):
    result = cli_in_process("train", "hparams_search=vqa_optuna", "optimized_metric=val/vqa/accuracy", cwd=tmp_path)
    assert result.returncode == 2 and "optimized_metric=val/vqa/accuracy" in result.stderr
    assert "val/vqa/acc_yes_no" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "multirun").exists()


def test_search_space_values_are_checked_like_sweep_values():
    with pytest.raises(ConfigError, match="fusion=atention: unknown choice"):
        _split_sweeps(_parse_search_space({"fusion": "choice(concat, atention)"}))
    base, variants = _split_sweeps(_parse_search_space({"optim.optimizer.lr": "tag(log, interval(1e-4, 3e-3))"}))
    assert base == ["optim.optimizer.lr=0.0001"] and variants == [["optim.optimizer.lr=0.003"]]


def _sweep_command(sweep_dir: Path) -> list[str]:
    # The sweep is killed the moment the first job has finished: the second has then barely started.
    return [
        sys.executable, "-m", "cmvl", "train", "-m", "trainer.max_epochs=1,3", *TINY_WORLD, *TINY_FIXED_EPOCHS,
        f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip


def test_an_interrupted_grid_sweep_finishes_without_rerunning_finished_jobs(tmp_path, cache_dir):
    sweep_dir = tmp_path / "grid"
    first, second = sweep_dir / "trainer.max_epochs=1", sweep_dir / "trainer.max_epochs=3"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        _sweep_command(sweep_dir), cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (first / "summary.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the whole sweep dies at once, as on a lost node
    process.wait()
    assert (first / "summary.json").exists() and not (second / "summary.json").exists()
    finished_at = (first / "summary.json").stat().st_mtime_ns

    result = cli_in_process(*_sweep_command(sweep_dir)[3:], cwd=tmp_path)  # re-run: in-process (the basic launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{first} finished in an earlier run of this sweep; not run again" in result.stderr
    assert (first / "summary.json").stat().st_mtime_ns == finished_at
    assert "sorted by val/vqa/acc" in result.stdout and "reproduce: cmvl train" in result.stdout
    assert json.loads((second / "summary.json").read_text())["epochs"] == 3
    report = collect(sweep_dir)
    assert [job.status for job in report.jobs] == ["done", "done"]
    assert len(_report_rows(sweep_dir)) == 2


@pytest.mark.skipif(sys.platform != "linux", reason="submitit's local executor is tested on Linux")
def test_submitit_local_runs_a_two_job_sweep(tmp_path, cache_dir):
    sweep_dir = tmp_path / "submitit"
    result = run_cli(
        "train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=0,1", *TINY,
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (0, 1):
        assert (sweep_dir / f"seed={seed}" / "summary.json").exists()
        assert (sweep_dir / f"seed={seed}" / "checkpoints" / "best.ckpt").exists()
    assert len(_report_rows(sweep_dir)) == 2


def _fake_job(sweep_dir: Path, name: str, number: int, value: float | None, *, checkpoint: bool = False) -> None:
    job = sweep_dir / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- {name}\n")
    (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {number}\n")
    if value is not None:
        summary = {"optimized_metric": "val/x", "optimized_value": value, "mode": "max", "epochs": 3}
        (job / "summary.json").write_text(json.dumps(summary))
    if checkpoint:
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "last.ckpt").write_bytes(b"")


def test_report_sorts_best_first_and_tells_unfinished_from_failed(tmp_path):
    for number, (name, value) in enumerate([("lr=1", 0.2), ("lr=2", 0.5), ("lr=3", None), ("lr=4", 0.3)]):
        _fake_job(tmp_path, name, number, value, checkpoint=name == "lr=3")
    _fake_job(tmp_path, "lr=5", 4, None)
    report = collect(tmp_path)
    assert [j.directory.name for j in report.jobs] == ["lr=2", "lr=4", "lr=1", "lr=3", "lr=5"]
    assert [j.status for j in report.jobs] == ["done", "done", "done", "unfinished", "failed"]
    assert report.swept == ["lr"] and report.best.directory.name == "lr=2"
    assert reproduce_line(report.best) == "cmvl train lr=2"

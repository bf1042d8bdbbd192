"""What cmvl prints: `cmvl: ` lines through the `cmvl` logger (rank 0, verbosity), third-party noise filtered by its
exact text, file modes that follow the umask, a progress bar that stops at trainer.max_steps, and a run that says
where it writes and how to evaluate what it wrote."""

from __future__ import annotations

import logging
import os
import shlex
import stat
import warnings
from pathlib import Path

import pytest

from cmvl.log import DEFAULT_VERBOSITY, EVERY_RANK, configure, get_logger, verbosity_of
from tests.conftest import TINY_TRAINING, TINY_WORLD, run_cli


@pytest.fixture
def cmvl_log():
    yield get_logger("cmvl.tests")
    configure(DEFAULT_VERBOSITY)


def test_lines_are_prefixed_and_verbosity_picks_them(cmvl_log, capsys):
    configure("info")
    cmvl_log.debug("a detail")
    cmvl_log.info("run directory x")
    cmvl_log.warning("skipped something")
    cmvl_log.error("it broke")
    assert capsys.readouterr().err.splitlines() == [
        "cmvl: run directory x",
        "cmvl: skipped something",
        "cmvl: error: it broke",
    ]
    configure("quiet")
    cmvl_log.info("run directory x")
    cmvl_log.warning("skipped something")
    assert capsys.readouterr().err.splitlines() == ["cmvl: skipped something"]
    configure("debug")
    cmvl_log.debug("a detail")
    assert capsys.readouterr().err.splitlines() == ["cmvl: debug: a detail"]


def test_only_global_rank_zero_speaks_except_errors_and_every_rank_lines(cmvl_log, capsys, monkeypatch):
    from lightning_utilities.core.rank_zero import rank_zero_only

    configure("info")
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    cmvl_log.info("resuming from x")
    cmvl_log.warning("skipped image y", extra=EVERY_RANK)
    cmvl_log.error("it broke")
    assert capsys.readouterr().err.splitlines() == ["cmvl: skipped image y", "cmvl: error: it broke"]
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    cmvl_log.info("resuming from x")
    assert capsys.readouterr().err == "cmvl: resuming from x\n"


def test_a_bad_verbosity_is_refused_and_the_last_override_wins():
    from cmvl.errors import ConfigError

    with pytest.raises(ConfigError, match="verbosity=loud: must be one of quiet, info, debug"):
        configure("loud")
    assert verbosity_of(["a=1", "verbosity=quiet", "+verbosity=debug"]) == "debug"
    assert verbosity_of(["verbosity=quiet,debug"]) == DEFAULT_VERBOSITY  # a sweep over it: each job sets its own
    assert verbosity_of([]) == DEFAULT_VERBOSITY


def _shown_warnings(verbosity: str, emit) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure(verbosity)  # its filters go in front of the catch-all
        emit()
    configure(DEFAULT_VERBOSITY)
    return [str(w.message) for w in caught]


def test_the_torchdata_and_torch_deprecation_noise_is_filtered_and_shown_with_debug():
    from pytorch_lightning.utilities._pytree import _tree_flatten
    from torchdata.stateful_dataloader import StatefulDataLoader

    def emit():
        StatefulDataLoader(list(range(4)), batch_size=2)
        _tree_flatten(1)  # Lightning 2.6 builds a LeafSpec, which torch >= 2.10 deprecates

    shown = _shown_warnings("debug", emit)
    # If one of these fails, the library no longer says it: remove its entry from cmvl.log.NOISE_WARNINGS.
    assert any("'set_vital' is deprecated" in m for m in shown), shown
    assert any("isinstance(treespec, LeafSpec)" in m for m in shown), shown
    assert not any("set_vital" in m or "LeafSpec" in m for m in _shown_warnings("info", emit))


def test_only_the_sync_dist_lines_of_already_synced_metrics_are_filtered():
    from pytorch_lightning.utilities.warnings import PossibleUserWarning

    def emit():
        for key in ("val/vqa/acc", "test/caption/cider", "train/loss_epoch"):
            warnings.warn(
                f"It is recommended to use `self.log({key!r}, ..., sync_dist=True)` when logging on epoch level in "
                "distributed setting to accumulate the metric across devices.",
                PossibleUserWarning,
                stacklevel=1,
            )
        warnings.warn(
            "You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a "
            "`LightningDataModule`. It will use the implementation from `LightningModule` instance.",
            stacklevel=1,
        )

    assert ["train/loss_epoch" in m for m in _shown_warnings("info", emit)] == [True]  # not synced: still said
    assert len(_shown_warnings("debug", emit)) == 4


def test_the_litlogger_advertisement_is_filtered_and_lightning_info_follows_verbosity():
    import lightning_utilities.core.rank_zero as rank_zero_module
    import pytorch_lightning as pl

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    def lines_of(verbosity: str) -> list[str]:
        configure(verbosity)
        handler = Lines()
        rank_zero_module.log.addHandler(handler)  # the logger Lightning's rank_zero_info writes through
        try:
            pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        finally:
            rank_zero_module.log.removeHandler(handler)
            configure(DEFAULT_VERBOSITY)
        return handler.lines

    info = lines_of("info")
    assert any(line.startswith("GPU available") for line in info) and not any("litlogger" in line for line in info)
    assert any("litlogger" in line for line in lines_of("debug"))
    assert lines_of("quiet") == []


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_written_atomically_get_the_mode_the_umask_gives(tmp_path, umask):
    from cmvl.atomic_file import atomic_write, write_json_atomic
    from cmvl.training.checkpoint_io import AtomicCheckpointIO

    with atomic_write(tmp_path / "a.txt") as f:
        f.write("x")
    write_json_atomic(tmp_path / "summary.json", {"a": 1})
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "checkpoints" / "best.ckpt")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives: the reference
    assert _mode(plain) == 0o666 & ~umask
    for name in ("a.txt", "summary.json", "checkpoints/best.ckpt"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name


def test_a_shapes_world_folder_gets_the_mode_the_umask_gives(tmp_path, umask):
    from cmvl.data.shapes.world import ShapesSpec, ensure_shapes_world

    spec = ShapesSpec(images={"train": 1, "val": 1, "test": 1}, questions_per_image=1, size=16, seed=0)
    root = ensure_shapes_world(tmp_path / "world", spec)
    assert _mode(root) == 0o777 & ~umask
    assert _mode(root / "shapes.json") == 0o666 & ~umask


def _fit_with_bar(bar, **trainer_args) -> list[tuple[str, int | float, int]]:
    """Fit Lightning's BoringModel with `bar`; (event, the bar's total, its position) at each epoch start/end."""
    import pytorch_lightning as pl
    from pytorch_lightning.demos.boring_classes import BoringModel

    seen = []

    class Watch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(("start", bar.train_progress_bar.total, bar.train_progress_bar.n))

        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(("end", bar.train_progress_bar.total, bar.train_progress_bar.n))

    trainer = pl.Trainer(
        accelerator="cpu",
        callbacks=[bar, Watch()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **trainer_args,
    )
    trainer.fit(BoringModel())
    return seen


def test_the_progress_bar_total_stops_at_max_steps():
    from cmvl.training.progress_bars import StepBudgetTQDMProgressBar

    seen = _fit_with_bar(StepBudgetTQDMProgressBar(refresh_rate=1), max_epochs=1, limit_train_batches=10, max_steps=3)
    assert seen == [("start", 3, 0), ("end", 3, 3)]  # Lightning's own bar: 10 at the start, 3/10 at the end
    seen = _fit_with_bar(StepBudgetTQDMProgressBar(refresh_rate=1), max_epochs=5, limit_train_batches=4, max_steps=6)
    assert seen == [("start", 4, 0), ("end", 4, 4), ("start", 2, 0), ("end", 2, 2)]
    seen = _fit_with_bar(
        StepBudgetTQDMProgressBar(refresh_rate=1), max_epochs=1, limit_train_batches=10, max_steps=2,
        accumulate_grad_batches=2,
    )  # fmt: skip
    assert seen == [("start", 4, 0), ("end", 4, 4)]
    seen = _fit_with_bar(StepBudgetTQDMProgressBar(refresh_rate=1), max_epochs=1, limit_train_batches=5)
    assert seen == [("start", 5, 0), ("end", 5, 5)]  # no max_steps: the epoch's batches


def test_the_rich_progress_bar_total_stops_at_max_steps():
    import pytorch_lightning as pl
    from pytorch_lightning.demos.boring_classes import BoringModel

    from cmvl.training.progress_bars import StepBudgetRichProgressBar

    bar = StepBudgetRichProgressBar()
    totals = []

    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            task = next(t for t in bar.progress.tasks if t.id == bar.train_progress_bar_id)
            totals.append((task.total, task.completed))

    trainer = pl.Trainer(
        accelerator="cpu", callbacks=[bar, Watch()], logger=False, enable_checkpointing=False,
        enable_model_summary=False, limit_val_batches=0, max_epochs=1, limit_train_batches=10, max_steps=3,
    )  # fmt: skip
    trainer.fit(BoringModel())
    assert totals == [(3, 3)]


@pytest.fixture(scope="module")
def unvalidated_run(tmp_path_factory, cache_dir):
    """A run with no validation at all: it still names its checkpoints and how to evaluate one."""
    run_dir = tmp_path_factory.mktemp("novalidation") / "run"
    result = run_cli(
        "train",
        *TINY_WORLD,
        # the keys set below, each given once (a key given twice gets a warning line)
        *(o for o in TINY_TRAINING if not o.startswith(("trainer.limit_val_batches=", "trainer.max_epochs="))),
        "trainer.limit_val_batches=0",
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
        cwd=run_dir.parent,
        env_extra={"PYTHONWARNINGS": ""},  # warnings as a user sees them (the other tests ignore them)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


NOISE = (
    "LeafSpec",
    "set_vital",
    "litlogger",
    "transfer_batch_to_device",
    "could not find the monitored key",
    "is an Enum subclass",
    "Traceback",
)


def test_a_run_says_where_it_writes_and_ends_with_its_checkpoints_and_an_eval_line(unvalidated_run):
    run_dir, result = unvalidated_run
    assert result.stderr.splitlines()[0] == f"cmvl: run directory {run_dir}"
    assert not [line for line in result.stderr.splitlines() if any(n in line for n in NOISE)], result.stderr
    assert "no validation score was logged" in result.stdout
    assert f"last checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'}" in result.stdout.splitlines()
    [line] = [line for line in result.stdout.splitlines() if line.startswith("evaluate with: ")]
    command = shlex.split(line.removeprefix("evaluate with: "))
    assert command[:2] == ["cmvl", "eval"] and Path(command[2].removeprefix("ckpt=")).is_file()


def test_the_printed_eval_line_runs_and_quiet_keeps_only_results(unvalidated_run, tmp_path):
    run_dir, result = unvalidated_run
    [line] = [line for line in result.stdout.splitlines() if line.startswith("evaluate with: ")]
    command = shlex.split(line.removeprefix("evaluate with: "))
    evaluated = run_cli(*command[1:], f"out={tmp_path}", "verbosity=quiet", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "val/vqa/acc = " in evaluated.stdout and (tmp_path / "metrics.json").is_file()
    assert "GPU available" not in evaluated.stderr and "cmvl:" not in evaluated.stderr

"""A second Ctrl-C aborts at once, and a signal outside a training step saves and exits 3 (the exact resume after a
first Ctrl-C is a case of tests/training/test_resume.py::test_preempt_and_resume_is_exact)."""

from __future__ import annotations

import json
import signal

import pytest

from cmvl.run_files import SUMMARY_FILE
from cmvl.training.preemption import EXIT_PREEMPTED, PreemptionCallback
from tests.conftest import TINY_TRAINING, TINY_WORLD, assert_one_line_error, cli_in_process, run_cli


def test_second_ctrl_c_aborts_at_once(tmp_path):
    callback = PreemptionCallback(tmp_path)
    callback._on_signal(signal.SIGINT, None)  # the first one only asks for a save at the next step boundary
    assert callback._signalled
    with pytest.raises(KeyboardInterrupt):
        callback._on_signal(signal.SIGINT, None)
    callback._on_signal(signal.SIGTERM, None)  # a repeated SIGTERM still waits for the save


KILLER_MODULE = "cmvl_test_killer"  # a user's own callback module, put on PYTHONPATH by the test
KILLER_SOURCE = '''
import os
import signal

import pytorch_lightning as pl


class KillAtValidation(pl.Callback):
    """SIGTERM at the end of the first validation after the sanity check: outside any training step."""

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
'''


def test_sigterm_in_validation_saves_exits_3_and_resumes(tiny_world, tmp_path):
    """Outside a training step Lightning's own SIGTERM handling used to end `fit` quietly with exit 0."""
    user = tmp_path / "user"
    user.mkdir()
    (user / f"{KILLER_MODULE}.py").write_text(KILLER_SOURCE)
    run_dir = tmp_path / "run"
    common = (*TINY_WORLD, *TINY_TRAINING, f"hydra.run.dir={run_dir}", f"extra_target_prefixes=[{KILLER_MODULE}]")
    env = {"PYTHONPATH": str(user)}
    stopped = run_cli(
        "train", *common, f"+callbacks.k._target_={KILLER_MODULE}.KillAtValidation", cwd=tmp_path, env_extra=env
    )
    line = assert_one_line_error(stopped, "preempted: saved step 3", "resume=auto", exit_code=EXIT_PREEMPTED)
    assert str(run_dir / "checkpoints" / "step00000003.ckpt") in line
    assert not (run_dir / SUMMARY_FILE).exists()

    resumed = cli_in_process("train", *common, "resume=auto", cwd=tmp_path)  # the signal was the stopped process's
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(global step 3)" in resumed.stderr
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["global_step"] == 6

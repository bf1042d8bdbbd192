"""Ctrl-C (SIGINT) during training saves at the next step boundary and exits 3 like SIGTERM; `resume=auto` then
ends bit-identical to an uninterrupted run. A second Ctrl-C aborts at once."""

from __future__ import annotations

import json
import signal

import pytest

from cmvl.run_files import SUMMARY_FILE
from cmvl.training.preemption import EXIT_PREEMPTED, PreemptionCallback
from tests.conftest import TINY_TRAINING, TINY_WORLD, assert_one_line_error, run_cli, same_training_state
from tests.test_resume import _final_state, _logged_losses, _train, reference  # noqa: F401 - `reference` is a fixture


def test_ctrl_c_saves_and_resume_is_exact(reference, tmp_path):  # noqa: F811 - the fixture imported above
    run_dir, ids = tmp_path / "run", tmp_path / "ids.txt"
    stopped = _train(
        run_dir,
        "+callbacks.kill._target_=tests.resume_helpers.SignalAtStep",
        "+callbacks.kill.step=6",
        "+callbacks.kill.signal_name=SIGINT",
        ids_file=ids,
    )
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-2000:]
    assert "saved step 6" in stopped.stderr and "Traceback" not in stopped.stderr
    assert (run_dir / "checkpoints" / "step00000006.ckpt").is_file()

    resumed = _train(run_dir, "resume=auto", ids_file=ids)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "(global step 6)" in resumed.stderr
    expected_state, expected_ids, expected_losses = reference
    assert ids.read_text() == expected_ids
    assert same_training_state(_final_state(run_dir), expected_state)
    assert _logged_losses(run_dir) == expected_losses


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

    resumed = run_cli("train", *common, "resume=auto", cwd=tmp_path, env_extra=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(global step 3)" in resumed.stderr
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["global_step"] == 6

"""Ctrl-C (SIGINT) during training saves at the next step boundary and exits 3 like SIGTERM; `resume=auto` then
ends bit-identical to an uninterrupted run. A second Ctrl-C aborts at once."""

from __future__ import annotations

import signal

import pytest

from cmvl.training.preemption import EXIT_PREEMPTED, PreemptionCallback
from tests.conftest import same_training_state
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

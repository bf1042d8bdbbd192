"""scripts/bench_train.py runs its three measurements on a tiny config and reports consistent figures (correctness
only: speed is never a pass/fail threshold in a test)."""

from __future__ import annotations

import importlib.util
import math

from tests.conftest import REPO, TINY_TRAINING, TINY_WORLD


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "scripts" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_train_measures_plain_lightning_and_cmvl_train(tiny_world, capsys):
    tiny = [o for o in TINY_TRAINING if not o.startswith(("trainer.max_epochs", "trainer.limit_"))]
    result = _bench().main(["--steps", "3", "--warmup", "1", *TINY_WORLD, *tiny])
    rows = [result[k] for k in ("a plain PyTorch", "b cmvl LitModule", "c cmvl train (files)")]
    for row in rows:
        assert row["samples_per_second"] > 0 and math.isfinite(row["samples_per_second"])
        assert row["step_seconds_mean"] > 0 and row["peak_mb"] > 0
    assert rows[0]["flops_per_step"] > 0 and rows[1]["steps"] == rows[2]["steps"] == 3
    assert 0 <= rows[2]["between_steps_share"] < 1
    ratios = result["ratios"]
    assert math.isclose(ratios["c/b"], rows[2]["samples_per_second"] / rows[1]["samples_per_second"])
    printed = capsys.readouterr().out
    assert "b/a = " in printed and "c/a = " in printed and "samples/s" in printed

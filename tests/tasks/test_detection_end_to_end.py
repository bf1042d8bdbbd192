"""task=detection through the real CLI: open-vocabulary phrases with a held-out phrase and fusion-conditioned queries
on the tiny shapes world (`cmvl eval` reproduces the best validation score and writes COCO results), and the same
command on the real COCO instances files."""

from __future__ import annotations

import json
import math

from tests.conftest import FIXTURES, TINY_TRAINING, TINY_WORLD_ANY_TASK, cli_in_process


def test_phrases_with_a_heldout_phrase_train_evaluate_and_write_coco_results(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    overrides = [
        *TINY_WORLD_ANY_TASK,
        *TINY_TRAINING,
        "task=detection",
        "task.queries=phrases",
        "task.heldout_queries=[red circle]",
        "task.condition=fusion",
    ]
    result = cli_in_process("train", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["monitor"] == "val/detection/seen_AP50"
    assert {"val/detection/AP50", "val/detection/heldout_AP50", "val/detection/seen_AR100"} <= set(
        summary["best_epoch_metrics"]
    )
    assert (run_dir / "samples" / "epoch001.png").stat().st_size > 0
    out = tmp_path / "eval"
    out.mkdir()
    evaluated = cli_in_process("eval", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"out={out}", cwd=out)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isclose(metrics["metrics"]["val/detection/seen_AP50"], summary["best_score"], abs_tol=1e-6)
    predictions = json.loads((out / "predictions_detection_val.json").read_text())
    assert set(predictions[0]) == {"image_id", "category_id", "bbox", "score", "query"}
    names = {}
    for record in predictions:  # one category id per query, the same in every record
        assert names.setdefault(record["category_id"], record["query"]) == record["query"]
    assert "red circle" in names.values() and len(names) == len(set(names.values()))
    # 16 grid tokens at 32 px × every query, the best 100 kept, for each of the 20 validation images
    assert len(predictions) == 20 * min(100, 16 * len(names))


def test_the_same_command_runs_on_the_real_coco_instances(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    coco = ["dataset=coco", f"dataset.root={FIXTURES / 'coco'}", "dataset.subtypes={train:val2017,val:val2017}"]
    overrides = [*coco, *TINY_TRAINING, "task=detection", "data.num_workers=0", "data.batch_size=2"]
    result = cli_in_process("train", *overrides, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["monitor"] == "val/detection/AP50" and summary["best_epoch_metrics"]["val/detection/AP_L"] >= 0

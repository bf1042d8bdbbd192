"""Every task trains and evaluates through the real CLI: on the tiny shapes world, and on the real COCO and Visual
Genome fixture files. `cmvl eval` reproduces the best validation score and writes the task's results format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cmvl.metrics.caption import java_available
from tests.conftest import FIXTURES, TINY_TRAINING, TINY_WORLD, run_cli

TINY = [a for a in TINY_WORLD if not a.startswith("task.")]
# task → (monitored metric, the keys of one predictions record)
TASKS = {
    "tagging": ("mAP", {"image_id", "labels", "scores"}),
    "grounding": ("acc_iou50", {"region_id", "image_id", "box"}),
    "retrieval": ("r_mean", None),
    "caption": ("cider", {"image_id", "caption"}),
}


def _train(run_dir: Path, *overrides: str) -> dict:
    result = run_cli("train", *overrides, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def _evaluate(run_dir: Path, out: Path, *overrides: str) -> dict:
    result = run_cli("eval", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"out={out}", *overrides, cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def predictions_of(evaluation: dict):
    return json.loads(Path(evaluation["predictions_file"]).read_text())


@pytest.mark.parametrize("task", list(TASKS))
def test_task_trains_and_eval_reproduces_it_on_shapes(task, tmp_path, cache_dir):
    monitor, record_keys = TASKS[task]
    summary = _train(tmp_path / "run", *TINY, *TINY_TRAINING, f"task={task}")
    key = f"val/{task}/{monitor}"
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert key in header
    out = tmp_path / "eval"
    out.mkdir()
    evaluation = _evaluate(tmp_path / "run", out)
    assert math.isclose(evaluation["metrics"][key], summary["best_score"], abs_tol=1e-6)
    if task == "caption":  # the COCO caption evaluation's metrics; METEOR only in `cmvl eval` (its JVM is slow)
        assert {"meteor", "bleu4", "rouge_l"} <= {k.split("/")[-1] for k in evaluation["metrics"]} | (
            set() if java_available() else {"meteor"}
        )
        assert "val/caption/meteor" not in header
        assert len(predictions_of(evaluation)) == 20  # one caption per image
    predictions = predictions_of(evaluation)
    if record_keys is None:  # retrieval: rankings both ways, every query of the split once
        assert len(predictions["text_to_image"]) == 20 * 5 and len(predictions["image_to_text"]) == 20
        assert all(len(r["image_ids"]) == 10 for r in predictions["text_to_image"])
    else:
        assert predictions and set(predictions[0]) == record_keys


COCO = FIXTURES / "coco"


@pytest.mark.parametrize("task", ["caption", "tagging"])  # retrieval reads the same captions table as caption
def test_task_on_the_real_coco_files(task, tmp_path, cache_dir):
    coco = ["dataset=coco", f"dataset.root={COCO}", "dataset.subtypes={train:val2017,val:val2017}"]
    extra = ["task.meteor=never"] if task == "caption" else []
    _train(tmp_path / "run", *coco, *TINY_TRAINING, "data.num_workers=0", "data.batch_size=2", f"task={task}", *extra)
    out = tmp_path / "eval"
    out.mkdir()
    metrics = _evaluate(tmp_path / "run", out)["metrics"]
    assert f"val/{task}/{TASKS[task][0]}" in metrics


def test_grounding_on_the_real_visual_genome_regions(tmp_path, cache_dir):
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": [4, 5], "val": [5]}))
    vg = ["dataset=visual_genome", f"dataset.root={FIXTURES / 'visual_genome'}", f"dataset.split_file={split_file}"]
    _train(tmp_path / "run", *vg, *TINY_TRAINING, "data.num_workers=0", "data.batch_size=4", "task=grounding")
    out = tmp_path / "eval"
    out.mkdir()
    evaluation = _evaluate(tmp_path / "run", out)
    regions = json.loads((FIXTURES / "visual_genome" / "region_descriptions.json").read_text())
    image5 = [r for doc in regions for r in doc["regions"] if r["image_id"] == 5]
    predictions = json.loads(Path(evaluation["predictions_file"]).read_text())
    assert 0 < len(predictions) <= len(image5)
    assert {p["region_id"] for p in predictions} <= {r["region_id"] for r in image5}

"""Every task trains and evaluates through the real CLI: on the tiny shapes world, and on the real COCO and Visual
Genome fixture files. `cmvl eval` reproduces the best validation score and writes the task's results format."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cmvl.metrics.caption import java_available
from tests.conftest import FIXTURES, TINY_TRAINING, TINY_WORLD_ANY_TASK, cli_in_process, load_checkpoint_file

# task → (monitored metric, the keys of one predictions record)
TASKS = {
    "tagging": ("mAP", {"image_id", "labels", "scores"}),
    "grounding": ("acc_iou50", {"region_id", "image_id", "box"}),
    "retrieval": ("r_mean", None),
    "caption": ("cider", {"image_id", "caption"}),
}


def _train(run_dir: Path, *overrides: str) -> dict:
    result = cli_in_process("train", *overrides, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def _evaluate(run_dir: Path, out: Path, *overrides: str) -> dict:
    result = cli_in_process("eval", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"out={out}", *overrides, cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def predictions_of(evaluation: dict):
    return json.loads(Path(evaluation["predictions_file"]).read_text())


def _train_and_evaluate(tmp_path: Path, task: str, *overrides: str) -> tuple[dict, str, list | dict]:
    """Train, evaluate the best checkpoint, check that evaluation reproduces the best validation score; return the
    evaluation, the metrics.csv header and the predictions."""
    summary = _train(tmp_path / "run", *overrides, f"task={task}")
    key = f"val/{task}/{TASKS[task][0]}"
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert key in header and summary["monitor"] == key
    out = tmp_path / "eval"
    out.mkdir()
    evaluation = _evaluate(tmp_path / "run", out)
    assert math.isclose(evaluation["metrics"][key], summary["best_score"], abs_tol=1e-6)
    predictions = predictions_of(evaluation)
    if TASKS[task][1] is not None:
        assert predictions and set(predictions[0]) == TASKS[task][1]
    return evaluation, header, predictions


# Single-task runs on the real fixture files; every task on shapes, jointly, is in tests/tasks/test_multitask.py.
COCO = FIXTURES / "coco"


def test_caption_on_the_real_coco_files_with_the_coco_caption_metrics(tmp_path, cache_dir):
    coco = ["dataset=coco", f"dataset.root={COCO}", "dataset.subtypes={train:val2017,val:val2017}"]
    evaluation, header, predictions = _train_and_evaluate(
        tmp_path, "caption", *coco, *TINY_TRAINING, "data.num_workers=0", "data.batch_size=2"
    )
    # METEOR only in `cmvl eval` (its JVM is slow to start), and only where Java runs.
    names = {k.split("/")[-1] for k in evaluation["metrics"]}
    assert {"bleu1", "bleu4", "rouge_l", "cider"} <= names and ("meteor" in names) == java_available()
    assert "val/caption/meteor" not in header
    coco_images = {
        a["image_id"] for a in json.loads((COCO / "annotations" / "captions_val2017.json").read_text())["annotations"]
    }
    assert len(predictions) == 2 and {p["image_id"] for p in predictions} <= coco_images  # one per present image


def test_grounding_on_the_real_visual_genome_regions(tmp_path, cache_dir):
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": [4, 5], "val": [5]}))
    vg = ["dataset=visual_genome", f"dataset.root={FIXTURES / 'visual_genome'}", f"dataset.split_file={split_file}"]
    _, _, predictions = _train_and_evaluate(
        tmp_path, "grounding", *vg, *TINY_TRAINING, "data.num_workers=0", "data.batch_size=4"
    )
    regions = json.loads((FIXTURES / "visual_genome" / "region_descriptions.json").read_text())
    image5 = [r for doc in regions for r in doc["regions"] if r["image_id"] == 5]
    assert 0 < len(predictions) <= len(image5)
    assert {p["region_id"] for p in predictions} <= {r["region_id"] for r in image5}


def test_retrieval_with_image_text_matching_reranks_through_the_cli(tmp_path, tiny_world):
    evaluation, header, rankings = _train_and_evaluate(
        tmp_path, "retrieval", *TINY_WORLD_ANY_TASK, *TINY_TRAINING, "task.itm=true", "task.rerank_k=5"
    )
    assert "val/retrieval/itc_r_mean" in header  # the embedding-only score, logged beside the re-ranked one
    assert "val/retrieval/itc_r_mean" in evaluation["metrics"]
    assert len(rankings["text_to_image"]) == 20 * 5 and len(rankings["image_to_text"]) == 20
    assert all(len(r["image_ids"]) == 10 for r in rankings["text_to_image"])
    state = load_checkpoint_file(tmp_path / "run" / "checkpoints" / "best.ckpt")["state_dict"]
    assert "model.heads.retrieval.itm.weight" in state

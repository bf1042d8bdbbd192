"""task=classification: image-only batches, a linear head or class names through the text encoder (the batch's
shared queries), top-1 / top-5 by torchmetrics, a confusion-matrix picture per validation epoch, a predictions file
from `cmvl eval`, and a member of a multitask."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cmvl.config.compose import compose_config
from cmvl.metrics.classification import ClassificationMetrics
from cmvl.tasks.classification import ClassificationTask
from cmvl.training.build import build_datamodule, build_model
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, assert_one_line_error, cli_in_process
from tests.data.sources.test_image_folder import make_image_folder

SIZES = [o for o in TINY_TRAINING if o.startswith(("model.", "vision.", "text."))]
FOLDERS = {"train": {"red": 12, "blue": 12, "green": 12}, "val": {"red": 3, "blue": 3, "green": 3}}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, cache_dir):
    """A tiny text-head classifier trained by the CLI on an ImageFolder, and its `cmvl eval` output."""
    base = tmp_path_factory.mktemp("classification")
    root = make_image_folder(base / "data", FOLDERS, size=32)
    run_dir = base / "run"
    args = [*TINY_TRAINING, "task=classification", "task.head=text", "dataset=image_folder", f"dataset.root={root}"]
    result = cli_in_process(
        "train", *args, "vision.image_size=32", "data.num_workers=0", f"hydra.run.dir={run_dir}", cwd=base
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = base / "eval"
    out.mkdir()
    evaluation = cli_in_process("eval", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"out={out}", cwd=base)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    return run_dir, out, root


def test_trains_on_an_image_folder_draws_confusion_matrices_and_evaluates(folder_run):
    run_dir, out, _ = folder_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["monitor"] == "val/classification/top1"
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "val/classification/top1" in header and "val/classification/top5" in header
    assert {p.name for p in (run_dir / "samples").glob("confusion_*.png")} == {
        "confusion_epoch000.png",
        "confusion_epoch001.png",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isclose(metrics["metrics"]["val/classification/top1"], summary["best_score"], abs_tol=1e-6)
    assert metrics["metrics"]["val/classification/top5"] == 1.0  # 3 classes: always among the top 5
    predictions = json.loads((out / "predictions_classification_val.json").read_text())
    assert len(predictions) == 9 and set(predictions[0]) == {"image_id", "image", "label", "score", "top_k"}
    assert predictions[0]["image"] == "val/blue/0.jpg" and sorted(predictions[0]["top_k"]) == ["blue", "green", "red"]


def test_eval_on_data_with_other_classes_is_one_line(folder_run, tmp_path):
    run_dir, _, _ = folder_run
    other = make_image_folder(tmp_path / "other", {"train": {"cat": 1, "dog": 1}, "val": {"cat": 1}})
    result = cli_in_process(
        "eval", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"out={tmp_path}", f"dataset.root={other}",
        cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "are not the 3 classes the model was trained on")


@pytest.fixture(scope="module")
def shapes_data(tiny_world):
    """head → (config, prepared data module) for task=classification on the tiny shapes world."""
    prepared = {}
    for head in ("linear", "text"):
        cfg = compose_config([*TINY_WORLD_ANY_TASK, *SIZES, "task=classification", f"task.head={head}"])
        datamodule = build_datamodule(cfg)
        datamodule.prepare()
        prepared[head] = cfg, datamodule
    return prepared


@pytest.mark.parametrize("head", ["linear", "text"])
def test_batches_are_image_only_and_the_text_head_reads_the_class_names(shapes_data, head):
    cfg, datamodule = shapes_data[head]
    task: ClassificationTask = datamodule.task
    assert task.classes == ["circle", "square", "triangle"]
    batch = next(iter(datamodule.eval_dataloaders("val")["classification"]))
    assert batch.input_ids is None and batch.texts is None  # nothing tokenised per image
    torch.manual_seed(0)
    model = build_model(cfg, task, datamodule.tokenizer)
    parts = {key.split(".")[0] for key in model.state_dict()}
    if head == "linear":
        assert batch.queries is None and parts == {"vision", "vision_proj", "heads"}
    else:
        assert batch.queries.texts == task.classes and batch.queries.input_ids.shape[0] == 3
        assert {"text", "text_proj"} <= parts
    outputs = task.forward(model, batch)
    assert outputs.logits.shape == (len(batch), 3)
    task.loss(outputs, batch).backward()
    if head == "text":  # the class-name embeddings are learnt through the text encoder
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text.parameters())
        renamed = batch.queries.input_ids.flip(0)  # the names in another order: the scores follow them
        batch.queries.input_ids, batch.queries.attention_mask = renamed, batch.queries.attention_mask.flip(0)
        with torch.no_grad():
            assert torch.allclose(task.forward(model, batch).logits, outputs.logits.detach().flip(1), atol=1e-5)


def test_metrics_match_a_direct_count():
    torch.manual_seed(0)
    scores, target = torch.randn(50, 7), torch.randint(0, 7, (50,))
    metric = ClassificationMetrics(7, top_k=5)
    metric.update(scores[:20], target[:20])
    metric.update(scores[20:], target[20:])
    values = metric.compute()
    top5 = (scores.topk(5, dim=1).indices == target[:, None]).any(dim=1).float().mean()
    assert math.isclose(float(values["top1"]), float((scores.argmax(1) == target).float().mean()), abs_tol=1e-6)
    assert math.isclose(float(values["top5"]), float(top5), abs_tol=1e-6)
    confusion = torch.zeros(7, 7, dtype=torch.int64)
    for t, p in zip(target.tolist(), scores.argmax(1).tolist()):
        confusion[t, p] += 1
    assert torch.equal(metric.confusion_matrix(), confusion)


def test_a_multitask_member_logs_its_accuracy_and_confusion_picture(tiny_world):
    member = ["+task@task.tasks.classification=classification", "task.tasks.vqa.min_answer_count=1"]
    cfg = compose_config([*TINY_WORLD_ANY_TASK, *SIZES, "task=multitask", *member])
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    task = datamodule.task
    model = build_model(cfg, task, datamodule.tokenizer).eval()
    metric = task.make_metric()
    with torch.no_grad():
        for loader in datamodule.eval_dataloaders("val").values():
            batch = next(iter(loader))
            task.update_metric(metric, task.eval_forward(model, batch), batch)
    assert {"classification/top1", "classification/top5", "vqa/acc"} <= set(task.compute_metric(metric, model))
    pictures = task.epoch_pictures(metric)
    assert set(pictures) == {"classification_confusion"} and pictures["classification_confusion"].width > 100

"""Multitask training: the loader's sampling rules and exact mid-epoch resume, config errors, and VQA + captioning +
grounding trained and evaluated jointly through the CLI."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from cmvl.data.multitask_loader import MultiTaskLoader
from cmvl.data.sampling import ImageGroupedSampler
from cmvl.errors import ConfigError
from cmvl.tasks.caption import CaptionTask
from cmvl.tasks.multitask import MultiTask
from cmvl.tasks.vqa import VQATask
from cmvl.training.build import build_task
from tests.conftest import TINY_TRAINING, TINY_WORLD, cli_in_process


class _Rows(Dataset):
    def __init__(self, n: int, tag: str) -> None:
        self.n, self.tag = n, tag

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> str:
        return f"{self.tag}{i}"


def _loader(sampling: str, sizes=(("a", 24), ("b", 8), ("c", 12))) -> MultiTaskLoader:
    loaders = {}
    for tag, n in sizes:
        dataset = _Rows(n, tag)
        sampler = ImageGroupedSampler(dataset, np.arange(n), seed=5)
        loaders[tag] = StatefulDataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=list, drop_last=True)
    return MultiTaskLoader(loaders, sampling=sampling, weights={"a": 1.0, "b": 3.0, "c": 0.0}, seed=5)


def _epoch(loader: MultiTaskLoader, epoch: int) -> list[list[str]]:
    loader.sampler.set_epoch(epoch)  # what Lightning calls at each epoch start
    return list(loader)


def test_proportional_uses_every_batch_once_per_epoch_and_reshuffles():
    loader = _loader("proportional")
    first, second = _epoch(loader, 0), _epoch(loader, 1)
    assert len(first) == len(loader) == 6 + 2 + 3
    for batches in (first, second):
        rows = sorted(r for b in batches for r in b)
        assert rows == sorted([f"a{i}" for i in range(24)] + [f"b{i}" for i in range(8)] + [f"c{i}" for i in range(12)])
    assert first != second and _epoch(_loader("proportional"), 0) == first  # per-epoch order, same for a seed


def test_round_robin_alternates_and_weighted_follows_the_weights():
    tasks = [b[0][0] for b in _epoch(_loader("round_robin"), 0)]
    assert tasks == list("abcabcabcab")
    weighted = Counter(b[0][0] for e in range(20) for b in _epoch(_loader("weighted"), e))
    assert weighted["c"] == 0 and 2 < weighted["b"] / weighted["a"] < 4.5


@pytest.mark.parametrize("sampling", ["proportional", "round_robin"])
def test_resume_mid_epoch_continues_with_the_same_batches(sampling):
    reference = _epoch(_loader(sampling), 2)
    interrupted = _loader(sampling)
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    head = [next(iterator) for _ in range(5)]
    state = interrupted.state_dict()
    resumed = _loader(sampling)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # Lightning sets the epoch again after restoring
    assert head + list(resumed) == reference


def test_multitask_config_errors_name_the_key():
    vqa, caption = VQATask(), CaptionTask()
    with pytest.raises(ConfigError, match="task.weights"):
        MultiTask(tasks={"vqa": vqa, "caption": caption}, weights={"tagging": 1.0})
    with pytest.raises(ConfigError, match="task.monitor"):
        MultiTask(tasks={"vqa": vqa, "caption": caption}, monitor="grounding/acc_iou50")
    with pytest.raises(ConfigError, match="task.tasks.answers"):
        MultiTask(tasks={"answers": vqa})
    with pytest.raises(ConfigError, match="task.sampling"):
        MultiTask(tasks={"vqa": vqa}, sampling="random")


# All five tasks in one run: the default members plus retrieval and tagging, added on the command line.
ALL_TASKS = ["task=multitask", "+task@task.tasks.retrieval=retrieval", "+task@task.tasks.tagging=tagging"]
RECORD_KEYS = {
    "vqa": {"question_id", "answer"},
    "caption": {"image_id", "caption"},
    "grounding": {"region_id", "image_id", "box"},
    "tagging": {"image_id", "labels", "scores"},
}
MONITORED = {"vqa": "acc", "caption": "cider", "grounding": "acc_iou50", "retrieval": "r_mean", "tagging": "mAP"}


def test_every_task_trains_jointly_on_shapes_and_evaluates(tmp_path, cache_dir):
    world = [a.replace("task.min_answer_count", "task.tasks.vqa.min_answer_count") for a in TINY_WORLD]
    run_dir = tmp_path / "run"
    overrides = [*world, *TINY_TRAINING, *ALL_TASKS, "trainer.limit_train_batches=10"]
    result = cli_in_process("train", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    for task, metric in MONITORED.items():
        assert f"val/{task}/{metric}" in header and f"val/{task}/{metric}" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["monitor"] == "val/vqa/acc"
    # The metric names a sweep's optimized_metric is checked against before training are exactly those logged.
    logged = set(summary["best_epoch_metrics"]) - {"epoch", "step"}
    cfg = OmegaConf.create(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert set(build_task(cfg).validation_keys()) == logged
    # Each validation epoch drew its sample predictions, every task's samples in one picture.
    assert (run_dir / "samples" / "epoch001.png").stat().st_size > 0
    # The heads live in one model.
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {k.split(".")[2] for k in state["state_dict"] if k.startswith("model.heads.")} == set(MONITORED)
    out = tmp_path / "eval"
    out.mkdir()
    best = run_dir / "checkpoints" / "best.ckpt"
    evaluated = cli_in_process("eval", f"ckpt={best}", f"out={out}", "task.tasks.caption.meteor=never", cwd=out)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    best_epoch = summary["best_epoch_metrics"]
    for task, metric in MONITORED.items():  # evaluation reproduces every task's validation score
        key = f"val/{task}/{metric}"
        assert math.isclose(metrics["metrics"][key], best_epoch[key], abs_tol=1e-6), key
    assert set(metrics["predictions_file"]) == set(MONITORED)
    predictions = {k: json.loads(open(v).read()) for k, v in metrics["predictions_file"].items()}
    for task, keys in RECORD_KEYS.items():
        assert predictions[task] and set(predictions[task][0]) == keys, task
    assert len(predictions["caption"]) == 20  # one caption per image
    rankings = predictions["retrieval"]  # every caption and every image ranked once
    assert len(rankings["text_to_image"]) == 20 * 5 and len(rankings["image_to_text"]) == 20
    assert all(len(r["image_ids"]) == 10 for r in rankings["text_to_image"])

"""Scoring one split of a restored run through a Lightning `Trainer`: its metrics (when the split is annotated)
and its predictions in each task's official results format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl

from cmvl.evaluation.attacks import Attack, check_attackable
from cmvl.run import Run
from cmvl.tasks.base import Task
from cmvl.training.build import build_datamodule, single_device_trainer
from cmvl.training.lit_module import VLLitModule


@dataclass
class SplitScores:
    split: str
    metrics: dict[str, float]  # metric key (e.g. `test/vqa/acc`) → value; empty for a split without annotations
    predictions: dict[str, Any]  # member task name → its predictions (a list of records, or the task's own format)


def score_split(
    run: Run, split: str, *, trainer: pl.Trainer | None = None, attack: Attack | None = None
) -> SplitScores:
    """Every row of `split` through the run's model, once. The data module is built around the run's own task and
    tokenizer (nothing is fitted or rebuilt); `trainer` defaults to one device of the run's accelerator. `attack`
    (cmvl/evaluation/attacks.py): the split is scored a second time, each batch attacked first; those metrics are
    added as `<key>/<attack name>` (robust accuracy: `val/vqa/acc/pgd`)."""
    cfg = run.config
    datamodule = build_datamodule(cfg, task=run.task, tokenizer=run.tokenizer)
    loaders = datamodule.eval_dataloaders(split)
    lit = VLLitModule(model=run.model, task=run.task, optim={}, run_state={})
    lit.score_test = all(loader.collate_fn.targets.annotated for loader in loaders.values())
    if attack is not None:
        check_attackable(run.task, lit.score_test, attack)

    def new_trainer(**kwargs: Any) -> pl.Trainer:
        return single_device_trainer(cfg, enable_progress_bar=cfg.trainer.get("enable_progress_bar", True), **kwargs)

    trainer = trainer or new_trainer()
    trainer.test(lit, dataloaders=list(loaders.values()), verbose=False)
    metrics = {}
    if lit.score_test:
        metrics = {run.task.metric_key(split, k): float(v) for k, v in lit.test_values.items()}
    predictions = {member.name: _member_predictions(lit, member) for member in run.task.members()}
    if attack is not None:  # gradients inside the test steps: not under inference mode
        attacked = VLLitModule(model=run.model, task=run.task, optim={}, run_state={})
        attacked.attack = attack
        new_trainer(inference_mode=False).test(attacked, dataloaders=list(loaders.values()), verbose=False)
        metrics |= {f"{run.task.metric_key(split, k)}/{attack.name}": float(v) for k, v in attacked.test_values.items()}
    return SplitScores(split=split, metrics=metrics, predictions=predictions)


def _member_predictions(lit: VLLitModule, member: Task) -> Any:
    """A member task's predictions: its own final format, else its per-batch records in id order (the first key
    of each record)."""
    predictions = member.final_predictions(lit.task.member_metric(lit.test_metric, member.name))
    if predictions is None:
        records = lit.test_predictions.get(member.name, [])
        predictions = sorted(records, key=lambda p: next(iter(p.values())))
    return predictions

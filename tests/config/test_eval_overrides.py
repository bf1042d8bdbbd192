"""`cmvl eval` overrides: what evaluation reads and each task's evaluation options pass; keys that change the
model's shape, its task or only training are refused in one line (the CLI case: test_checkpoint_attacks.py)."""

from __future__ import annotations

import pytest

from cmvl.config.compose import compose_config
from cmvl.config.eval_overrides import check_eval_overrides
from cmvl.errors import ConfigError


def _config(task: str):
    return compose_config([f"task={task}"])


@pytest.mark.parametrize(
    ("task", "override"),
    [
        ("vqa", "dataset.split=test"),
        ("vqa", "dataset.root=/data/shapes"),
        ("vqa", "data.eval_batch_size=8"),
        ("vqa", "data.num_workers=0"),
        ("vqa", "trainer.precision=bf16-mixed"),
        ("vqa", "task.vqa_eval=2017"),
        ("vqa", "task.beam_size=3"),
        ("caption", "task.beam_size=5"),
        ("caption", "task.max_length=12"),
        ("retrieval", "task.rerank_k=4"),
        ("tagging", "task.threshold=0.3"),
        ("grounding", "task.iou_threshold=0.7"),
        ("detection", "task.queries=[red circle,square]"),  # texts to score a trained detector on
        ("detection", "task.max_detections=10"),
        ("multitask", "task.tasks.caption.beam_size=1"),
    ],
)
def test_evaluation_options_pass(task, override):
    check_eval_overrides(_config(task), [override])


@pytest.mark.parametrize(
    ("task", "override"),
    [
        ("vqa", "model.dim=64"),
        ("vqa", "vision.encoder.channels=8"),
        ("vqa", "text.encoder.hidden_size=64"),
        ("vqa", "fusion.layers=3"),
        ("vqa", "task._target_=cmvl.tasks.caption.CaptionTask"),
        ("vqa", "task.top_k=10"),  # VQA's top_k sizes the answer vocabulary (the head)
        ("vqa", "task.answer_mode=generate"),
        ("vqa", "optim.optimizer.lr=0.1"),
        ("vqa", "data.batch_size=4"),
        ("caption", "task.layers=4"),
        ("retrieval", "task.embed_dim=64"),
        ("detection", "task.heldout_queries=[square]"),  # what training left out: fixed by the checkpoint
        ("detection", "task.condition=fusion"),
        ("multitask", "task.tasks.vqa.head_hidden_mult=4"),
        ("multitask", "task.weights.vqa=2.0"),
    ],
)
def test_shape_task_and_training_keys_are_refused(task, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: cmvl eval cannot override it") as raised:
        check_eval_overrides(_config(task), ["dataset.split=test", override])
    assert "\n" not in str(raised.value)

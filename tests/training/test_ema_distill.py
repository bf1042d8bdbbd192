"""`ema.decay` (a moving average of the weights) and `distill.teacher` (knowledge distillation).

One student run (model.dim=16, EMA 0.5, distilled from the session's finished tiny run with the feature loss on)
is shared by the module: its checkpoint holds the raw weights and the average and nothing of the teacher; a run
resumed from its step-5 checkpoint ends bit-identical to it; a run restored from it (what eval, predict and export
use) has the average's weights, and validation scored those. The losses are checked against hand-computed formulas,
the average on a toy, and a teacher that does not fit (missing file, not a checkpoint, another vocabulary, another
task) is refused in one line before training.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from cmvl.training.distillation import (
    Distiller,
    DistillSettings,
    Teacher,
    logit_distillation,
    similarity_loss,
)
from cmvl.training.ema import EMA_COUNT, EMA_PREFIX, restored_weights, weight_average
from tests.conftest import (
    TINY_TRAINING,
    TINY_WORLD,
    assert_one_line_error,
    cli_in_process,
    load_checkpoint_file,
    same_training_state,
)

STUDENT = [
    *TINY_WORLD,
    *TINY_TRAINING,
    "model.dim=16",
    "model.dropout=0.1",  # the RNG state matters on resume
    "ema.decay=0.5",  # far from the raw weights after 6 steps
    "distill.alpha=0.7",
    "distill.feature_weight=0.5",
    "checkpoint.every_n_steps=1",
]


@pytest.fixture(scope="module")
def teacher(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory) -> Path:
    """The distilled student's run directory (2 epochs of 3 steps, a checkpoint at every step, the last two kept)."""
    run_dir = tmp_path_factory.mktemp("student") / "run"
    done = cli_in_process(
        "train",
        *STUDENT,
        f"distill.teacher={teacher}",
        f"hydra.run.dir={run_dir}",
        cwd=run_dir.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_average_equals_a_hand_computed_one():
    """After each optimizer step: the first average is the weights, then decay · average + (1 − decay) · weights."""
    torch.manual_seed(0)
    model, decay = nn.Linear(3, 2), 0.9
    average = weight_average(model, decay)
    assert not any(p.requires_grad for p in average.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    expected = None
    for _ in range(4):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        optimizer.step()
        average.update_parameters(model)
        now = model.weight.detach().clone()
        expected = now if expected is None else decay * expected + (1 - decay) * now
    assert torch.allclose(average.module.weight, expected, atol=1e-6)
    assert not torch.allclose(average.module.weight, model.weight)
    assert int(average.n_averaged) == 4


def test_checkpoint_holds_raw_weights_and_average_and_nothing_of_the_teacher(student, teacher):
    checkpoint = load_checkpoint_file(student / "checkpoints" / "last.ckpt")
    state = checkpoint["state_dict"]
    raw = {k.removeprefix("model.") for k in state if k.startswith("model.")}
    averaged = {k.removeprefix(EMA_PREFIX) for k in state if k.startswith(EMA_PREFIX)}
    assert raw and averaged == raw
    assert set(state) == {f"model.{k}" for k in raw} | {EMA_PREFIX + k for k in raw} | {EMA_COUNT}  # no teacher
    assert int(state[EMA_COUNT]) == checkpoint["global_step"] == 6
    teacher_state = load_checkpoint_file(teacher)["state_dict"]
    width = state["model.text_proj.0.weight"].shape[0], teacher_state["model.text_proj.0.weight"].shape[0]
    assert width == (16, 32)  # the student is the narrower model
    moved = [k for k in raw if state[f"model.{k}"].is_floating_point() and state[f"model.{k}"].ndim == 2]
    assert any(not torch.equal(state[f"model.{k}"], state[EMA_PREFIX + k]) for k in moved)


def test_off_by_default_nothing_changes(finished_tiny_run):
    """A run without ema.decay saves its model's weights alone, as before, and is restored from them."""
    state = load_checkpoint_file(finished_tiny_run / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(k.startswith("model.") for k in state)
    assert restored_weights(state) == {k.removeprefix("model."): v for k, v in state.items()}
    config = (finished_tiny_run / "config.yaml").read_text()
    assert "ema:\n  decay: null" in config and "teacher: null" in config


def test_restored_run_and_validation_use_the_average(student):
    """load_run (cmvl eval, predict, export) takes the average's weights, and the score validation logged for the
    best checkpoint is the average's."""
    import cmvl
    from cmvl.evaluation.score import score_split

    path = student / "checkpoints" / "best.ckpt"  # saved right after the validation it was chosen by
    state = load_checkpoint_file(path)["state_dict"]
    run = cmvl.load_run(path)
    restored = run.model.state_dict()
    assert all(torch.equal(restored[k], state[EMA_PREFIX + k]) for k in restored)
    logged = run.checkpoint.val_history[-1]
    assert logged["step"] == run.checkpoint.global_step
    scored = score_split(run, "val").metrics
    assert scored["val/vqa/acc"] == pytest.approx(logged["val/vqa/acc"], abs=1e-6)
    raw = copy.deepcopy(run)
    raw.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    assert not torch.allclose(_val_logits(raw), _val_logits(run))  # the two weights really are two models


def _val_logits(run) -> torch.Tensor:
    batch = _first_val_batch(run)
    with torch.no_grad():
        return run.task.forward(run.model, batch).logits


def _first_val_batch(run):
    from cmvl.training.build import build_datamodule

    datamodule = build_datamodule(run.config, task=run.task, tokenizer=run.tokenizer)
    return next(iter(next(iter(datamodule.eval_dataloaders("val").values()))))


def test_resume_with_average_and_teacher_is_exact(student, teacher, tmp_path):
    """Resumed from its step-5 checkpoint (mid-epoch), the student ends as the uninterrupted run: weights, average
    and optimizer state bit for bit (the teacher is loaded again from distill.teacher)."""
    run_dir = tmp_path / "run"
    shutil.copytree(student / "checkpoints", tmp_path / "from")
    done = cli_in_process(
        "train",
        *STUDENT,
        f"distill.teacher={teacher}",
        f"hydra.run.dir={run_dir}",
        f"resume={tmp_path / 'from' / 'step00000005.ckpt'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reference = load_checkpoint_file(student / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert set(resumed["state_dict"]) == set(reference["state_dict"])
    assert same_training_state(resumed, reference)


def test_distillation_losses_against_hand_computed_ones():
    torch.manual_seed(0)
    student, teacher, temperature = torch.randn(4, 6), torch.randn(4, 6), 3.0
    p, q = (teacher / temperature).softmax(-1), (student / temperature).softmax(-1)
    by_hand = (p * (p.log() - q.log())).sum(-1).mean() * temperature**2
    assert logit_distillation(student, teacher, temperature, "softmax") == pytest.approx(float(by_hand), rel=1e-5)
    bern = torch.distributions.Bernoulli
    kl = torch.distributions.kl_divergence(bern(logits=teacher / temperature), bern(logits=student / temperature))
    by_hand = kl.sum(-1).mean() * temperature**2
    assert logit_distillation(student, teacher, temperature, "sigmoid") == pytest.approx(float(by_hand), rel=1e-5)
    assert logit_distillation(teacher, teacher, temperature, "sigmoid") == pytest.approx(0.0, abs=1e-6)
    features = torch.randn(5, 8)
    wide = torch.cat([features, features], dim=1) * 3  # another width and scale, the same similarities
    assert similarity_loss(features, wide) == pytest.approx(0.0, abs=1e-6)
    assert similarity_loss(features, torch.randn(5, 12)) > 0.01


def test_distiller_mixes_the_task_loss_with_the_teachers_soft_targets(teacher):
    import cmvl

    run = cmvl.load_run(teacher)
    batch = _first_val_batch(run)
    student = copy.deepcopy(run.model).train()
    settings = DistillSettings(temperature=2.0, alpha=0.3, feature_weight=0.0)
    same = Distiller(Teacher(run.model, run.task), student, settings)
    outputs = run.task.forward(student, batch)
    task_loss = run.task.loss(outputs, batch)
    student.eval()  # dropout off: the student's logits are the teacher's
    outputs = run.task.forward(student, batch)
    assert float(same.loss(task_loss, outputs, batch)) == pytest.approx(0.7 * float(task_loss), rel=1e-5)
    with torch.no_grad():
        student.heads["vqa"][-1].weight.add_(torch.randn_like(student.heads["vqa"][-1].weight))
    settings = DistillSettings(temperature=2.0, alpha=0.3, feature_weight=0.5)
    distiller = Distiller(Teacher(run.model, run.task), student, settings)
    outputs = run.task.forward(student, batch)
    soft = logit_distillation(outputs.logits, run.task.forward(run.model, batch).logits, 2.0, "sigmoid")
    assert float(soft) > 0.01
    mixed = float(distiller.loss(task_loss, outputs, batch))
    # the heads' inputs are the same (only the last layer moved): the feature term is 0
    assert mixed == pytest.approx(0.7 * float(task_loss) + 0.3 * float(soft), rel=1e-5)
    assert not run.model.training and not any(p.requires_grad for p in run.model.parameters())


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        pytest.param("distill.teacher={missing}", "checkpoint not found", id="missing-file"),
        pytest.param("distill.teacher={text}", "not a readable checkpoint", id="not-a-checkpoint"),
        pytest.param("distill.teacher={folder}", "a folder, not a checkpoint file", id="a-folder"),
        pytest.param("distill.teacher={teacher} task.top_k=5", "answers differ", id="other-vocabulary"),
        pytest.param("distill.teacher={teacher} task=tagging", "the teacher was trained for task=vqa", id="other-task"),
        pytest.param("distill.teacher={teacher} task=caption", "task=caption is not distilled", id="caption"),
        pytest.param("distill.teacher={teacher} distill.alpha=1.5", "distill.alpha=1.5", id="bad-alpha"),
        pytest.param("ema.decay=1", "ema.decay=1", id="bad-decay"),
    ],
)
def test_a_teacher_or_setting_that_does_not_fit_is_refused_in_one_line(teacher, tmp_path, setting, needle):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    overrides = setting.format(missing=tmp_path / "none.ckpt", text=text, teacher=teacher, folder=tmp_path).split()
    world = [o for o in TINY_WORLD if not o.startswith("task.")] if "task" in setting else TINY_WORLD
    run_dir = tmp_path / "run"
    result = cli_in_process("train", *world, *TINY_TRAINING, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_one_line_error(result, needle)
    assert not (run_dir / "checkpoints").exists()

"""Adversarial training (`adversarial.*`, cmvl/training/adversarial.py) and evaluation under attack (`cmvl eval
attack=pgd|fgsm|embedding`, cmvl/evaluation/attacks.py): `steps=0` trains bit-identically to plain training, the
ascent steps have the promised lengths and bounds, the attacks stay in their balls and raise the loss, robust
accuracy is reported, and bad settings are one line (exit 2)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from cmvl.config.compose import compose_config
from cmvl.errors import ConfigError
from cmvl.evaluation.attacks import split_attack_overrides
from cmvl.run import load_run
from cmvl.training.adversarial import TokenPerturbation, build_adversary, symmetric_kl
from cmvl.training.train import run_training
from tests.conftest import (
    TINY_TRAINING,
    TINY_WORLD,
    assert_one_line_error,
    cli_in_process,
    load_checkpoint_file,
    same_training_state,
)

SHORT = [
    *TINY_WORLD,
    *TINY_TRAINING,
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "samples.count=0",
]


def _train(out, *extra: str):
    run_training(compose_config([*SHORT, *extra, f"paths.output_dir={out}"]))
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def runs(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial")
    return {
        "plain": _train(root / "plain"),
        "off": _train(
            root / "off",
            "adversarial.steps=0",
            "adversarial.step_size=0.7",
            "adversarial.kl_weight=3",
            "adversarial.norm_bound=0.2",
        ),
        "on": _train(root / "on", "adversarial.steps=2", "adversarial.norm_bound=1.5"),
    }


def test_steps_zero_trains_bit_identically_to_plain_training(runs):
    plain, off, on = (load_checkpoint_file(runs[k]) for k in ("plain", "off", "on"))
    assert same_training_state(plain, off)
    assert not same_training_state(plain, on)  # the perturbed forwards do change the training


@pytest.fixture(scope="module")
def attacked(runs):
    """The adversarially trained run and one validation batch of it."""
    from cmvl.export import validation_batches

    run = load_run(runs["on"])
    return run, validation_batches(run, 1)[0]


def _loss(run, batch) -> float:
    with torch.no_grad():
        return float(run.task.loss(run.task.forward(run.model, batch), batch))


def test_an_ascent_step_has_the_step_size_per_sample_and_respects_the_bound(attacked):
    run, batch = attacked
    for bound, expected in ((None, 0.3), (0.1, 0.1)):
        perturbation = TokenPerturbation()
        with torch.enable_grad(), perturbation.on(run.model):
            loss = run.task.loss(run.task.forward(run.model, batch), batch)
        perturbation.ascend(loss, 0.3, bound)
        assert {site for site, _ in perturbation.deltas} == {"text", "vision"}
        for delta in perturbation.deltas.values():
            norms = delta.detach().flatten(1).norm(dim=1)
            torch.testing.assert_close(norms, torch.full_like(norms, expected), rtol=1e-5, atol=1e-6)
    with perturbation.on(run.model), torch.no_grad():  # uphill: the perturbed loss is above the clean one
        raised = float(run.task.loss(run.task.forward(run.model, batch), batch))
    assert raised > _loss(run, batch)
    assert run.model.perturbation is None  # the hook is off again after the block


def test_symmetric_kl_matches_its_definition():
    torch.manual_seed(0)
    p, q = torch.randn(5, 7), torch.randn(5, 7)
    reference = F.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="batchmean") + F.kl_div(
        p.log_softmax(-1), q.log_softmax(-1), log_target=True, reduction="batchmean"
    )
    torch.testing.assert_close(symmetric_kl(p, q), reference)
    valid = torch.tensor([True, False, True, True, False])
    torch.testing.assert_close(symmetric_kl(p, q, valid), symmetric_kl(p[valid], q[valid]))


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_image_attacks_stay_in_the_eps_ball_and_raise_the_loss(attacked, name):
    run, batch = attacked
    attack, _ = split_attack_overrides([f"attack={name}", "attack.eps=8/255"] + (["attack.steps=3"] * (name == "pgd")))
    assert attack.eps == pytest.approx(8 / 255)
    images = attack._attacked_images(run.model, run.task, batch)
    clean = batch.images.float() / 255
    assert images.dtype == torch.float32 and 0 <= float(images.min()) and float(images.max()) <= 1
    assert float((images - clean).abs().max()) <= 8 / 255 + 1e-6
    assert _loss(run, replace(batch, images=images)) > _loss(run, batch)
    # the float entry: the clean pixels as floats give the model's uint8 outputs exactly
    same = replace(batch, images=clean)
    with torch.no_grad():
        torch.testing.assert_close(run.task.forward(run.model, same).logits, run.task.forward(run.model, batch).logits)


def test_cmvl_eval_reports_robust_accuracy(runs, tmp_path):
    result = cli_in_process(
        "eval",
        f"ckpt={runs['on']}",
        f"out={tmp_path}",
        "attack=pgd",
        "attack.eps=2/255",
        "attack.steps=2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/vqa/acc = " in result.stdout and "val/vqa/acc/pgd = " in result.stdout
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["attack"]["name"] == "pgd" and written["attack"]["eps"] == pytest.approx(2 / 255)
    assert written["metrics"]["val/vqa/acc/pgd"] <= written["metrics"]["val/vqa/acc"] + 1e-9


def test_the_embedding_attack_raises_the_loss_within_its_bound(attacked):
    run, batch = attacked
    attack, _ = split_attack_overrides(["attack=embedding", "attack.eps=0.5", "attack.steps=2"])
    perturbation = attack._embedding_perturbation(run.model, run.task, batch)
    assert all(float(d.detach().flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5 for d in perturbation.deltas.values())
    with perturbation.on(run.model), torch.no_grad():
        raised = float(run.task.loss(run.task.forward(run.model, batch), batch))
    assert raised > _loss(run, batch)
    assert (
        attack.eval_outputs(run.model, run.task, batch).logits.shape == run.task.forward(run.model, batch).logits.shape
    )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["attack=cw"], "attack=cw: choose one of fgsm, pgd, embedding"),
        (["attack=pgd", "attack.eps=-1"], "attack.eps=-1: must be a positive number"),
        (["attack=pgd", "attack.eps=2/0"], "attack.eps=2/0"),
        (["attack=pgd", "attack.steps=0"], "attack.steps=0: must be an integer >= 1"),
        (["attack=pgd", "attack.radius=3"], "attack.radius: no such attack setting"),
        (["attack.eps=0.1"], "choose the attack too"),
    ],
)
def test_bad_attack_settings_are_one_line(runs, tmp_path, overrides, needle):
    assert_one_line_error(
        cli_in_process("eval", f"ckpt={runs['on']}", f"out={tmp_path}", *overrides, cwd=tmp_path), needle
    )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["adversarial.steps=-1"], "adversarial.steps=-1: must be an integer >= 0"),
        (["adversarial.steps=1", "adversarial.step_size=0"], "adversarial.step_size=0"),
    ],
)
def test_bad_adversarial_settings_are_one_line(tiny_world, tmp_path, overrides, needle):
    assert_one_line_error(cli_in_process("train", *SHORT, *overrides, cwd=tmp_path), needle)


def test_a_task_without_prediction_logits_is_refused():
    from cmvl.tasks.retrieval import RetrievalTask

    with pytest.raises(ConfigError, match="adversarial.steps=1: task=retrieval has no loss on prediction logits"):
        build_adversary({"steps": 1, "step_size": 0.1}, RetrievalTask())


def test_older_configs_without_the_section_train_plainly():
    assert build_adversary(None, None) is None and build_adversary({"steps": 0}, None) is None

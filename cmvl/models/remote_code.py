"""Hugging Face models and tokenizers that would need their own Python code (`trust_remote_code`) are refused.

Such a folder's config names classes in `.py` files that ship with it (`auto_map`), or a `model_type` transformers
does not know; loading it would run that code. cmvl never does (every load also passes `trust_remote_code=False`):
a folder, a hub name or a checkpoint cannot make cmvl run code that the person running the command did not choose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmvl.errors import ConfigError

# The files whose contents decide which classes transformers loads for a model folder.
CONFIG_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def refuse_remote_code(path: str, key: str) -> None:
    """Raise `ConfigError` if the model at `path` (a local folder, or a hub name's cached files) needs its own code.
    `key` is the config key that named it, for the message."""
    for name in CONFIG_FILES:
        file = _local_file(path, name)
        if file is None:
            continue
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError):
            continue  # not readable as JSON: transformers reports that file itself
        if isinstance(config, dict):
            refuse_remote_config(config, f"{key}={path}: {name}")


def refuse_remote_config(config: dict[str, Any], where: str) -> None:
    """Raise `ConfigError` if a model or tokenizer config (a dict, as in its JSON file) needs the model's own code."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    reason = None
    if config.get("auto_map"):
        reason = f"auto_map names code shipped with the model ({', '.join(map(str, config['auto_map']))})"
    elif "model_type" in config and config["model_type"] not in CONFIG_MAPPING:
        reason = f"model_type '{config['model_type']}' is not one transformers ships"
    if reason is not None:
        raise ConfigError(
            f"{where}: needs the model's own Python code ({reason}); cmvl never runs code from a model: use a model "
            "whose architecture transformers ships"
        )


def _local_file(path: str, name: str) -> Path | None:
    """`name` in the folder `path`, or in the local cache of the hub model `path` (never the network)."""
    folder = Path(path)
    if folder.is_dir():
        file = folder / name
        return file if file.is_file() else None
    if folder.exists():
        return None  # a weights file, not a model folder
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, name)
    except ValueError:  # not a valid repo id: transformers reports the name
        return None
    return Path(cached) if isinstance(cached, str) else None


def load_auto_model(name: str, *, pretrained: bool, key: str):
    """A Hugging Face `AutoModel` from `name` (local folder, `pkg://` or hub name), with its pretrained weights or
    freshly initialised from its config; refused first if the folder would need its own code."""
    from transformers import AutoConfig, AutoModel

    from cmvl.models.pretrained import resolve_pretrained

    path = resolve_pretrained(name)
    refuse_remote_code(path, key)
    if pretrained:
        return AutoModel.from_pretrained(path, trust_remote_code=False)
    return AutoModel.from_config(AutoConfig.from_pretrained(path, trust_remote_code=False), trust_remote_code=False)

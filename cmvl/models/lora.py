"""LoRA adapters (Hu et al., 2021) on pretrained parts, through Hugging Face `peft`: `text.lora.*` (a Hugging Face
text encoder), `vision.lora.*` (a Hugging Face vision tower) and captioning's `task.lm_lora.*` (a pretrained LM
decoder). `r: null` = no adapters.

`peft.inject_adapter_in_model` adds a low-rank pair (lora_A, lora_B) beside each chosen linear layer and stops
every other weight of that part from learning; the rest of the model (projections, fusion, heads) trains as usual.
A checkpoint holds the frozen base weights and the adapters (the run rebuilds from it alone; the base weights'
source stays recorded in the config, e.g. `text.encoder.name`). `cmvl export` merges the adapters into the base
weights (`merge_lora`), so the exported model is a plain one.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cmvl.errors import ConfigError

LORA_KEYS = ("lora", "lm_lora")  # the config keys of the adapter settings (text.lora, vision.lora, task.lm_lora)


def apply_lora(model: nn.Module, settings: dict[str, Any] | None, key: str) -> None:
    """Adapters on `model` (in place) as `settings` ({r, alpha, dropout, target_modules}) say; nothing when
    `settings` is None or its `r` is null. `key` names the settings in messages (`text.lora`)."""
    if not settings or settings.get("r") is None:
        return
    from peft import LoraConfig, inject_adapter_in_model

    r = settings["r"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"{key}.r={r}: must be an integer >= 1 (or null: no LoRA)")
    targets = settings.get("target_modules")
    config = LoraConfig(
        r=r,
        lora_alpha=settings.get("alpha", 16),
        lora_dropout=settings.get("dropout", 0.0),
        target_modules=list(targets) if targets else None,  # None: peft's default for the architecture
    )
    try:
        inject_adapter_in_model(config, model)
    except ValueError as err:  # no module of that name, or no default for this architecture
        first = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"{key}.target_modules={list(targets) if targets else 'null'}: {first.rstrip('.')} "
            f"({type(model).__name__}'s linear layers are named e.g. {', '.join(_linear_names(model)[:6])})"
        ) from None


def _linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (what target_modules may name)."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names)


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def merge_lora(model: nn.Module) -> bool:
    """Each adapter merged into its base layer, which then replaces the adapted layer (in place): the model computes
    the same function with plain layers. Returns whether there was anything to merge."""
    from peft.tuners.lora import LoraLayer

    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in adapted:
        layer.merge(safe_merge=True)  # refuses (ValueError) a merge that gives non-finite weights
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, layer.get_base_layer())
    return bool(adapted)


def config_without_lora(config: Any) -> Any:
    """A plain-container config with every adapter setting off (`r: null`): the config of a merged model."""
    if isinstance(config, dict):
        return {
            k: {**v, "r": None} if k in LORA_KEYS and isinstance(v, dict) else config_without_lora(v)
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [config_without_lora(v) for v in config]
    return config


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters of `model`."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_summary(model: nn.Module) -> list[str]:
    """One line per adapted part of a model family (its direct children, heads included) and one for the whole
    model: trainable of all parameters. Empty when nothing is adapted."""
    if not has_lora(model):
        return []
    lines = []
    for name, part in model.named_children():
        if has_lora(part):
            trainable, total = parameter_counts(part)
            lines.append(f"LoRA on {name}: {trainable:,} trainable of {total:,} parameters")
    trainable, total = parameter_counts(model)
    lines.append(f"model: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    return lines

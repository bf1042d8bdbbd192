"""What each config value may be: one table of key → rule, checked in one pass (`check_values`).

cmvl hands most values on to Lightning, torch and its own modules, which fail late (a traceback in the middle of
setup) or not at all (a seed out of numpy's range is silently replaced by a random one). A key that a config does
not have is skipped, so the table serves every dataset, encoder, fusion and task, and old checkpoints' configs.
Keys under `task.` also apply to each member of a multitask (`task.tasks.<name>.`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cmvl.errors import ConfigError

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """`accepts(value)` says whether a value is valid; `expected` completes "must be ..." in the error line."""

    accepts: Callable[[Any], bool]
    expected: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int, maximum: int | None = None, *, special: Mapping[int, str] = {}, null: str = "") -> Rule:
    """An integer >= minimum (and <= maximum); `special`: other accepted values and what they mean; `null`: what
    null means, if it is accepted."""
    if maximum is not None:
        expected = f"an integer in [{minimum}, {maximum}]"
    else:
        expected = {1: "a positive integer", 0: "an integer >= 0"}.get(minimum, f"an integer >= {minimum}")
    extras = [f"{value} for {meaning}" for value, meaning in special.items()] + ([f"null for {null}"] if null else [])
    if extras:
        expected += f" (or {' or '.join(extras)})"

    def accepts(value: Any) -> bool:
        if value is None:
            return bool(null)
        in_range = _is_int(value) and value >= minimum and (maximum is None or value <= maximum)
        return in_range or (_is_int(value) and value in special)

    return Rule(accepts, expected)


def number(
    minimum: float = -math.inf,
    maximum: float = math.inf,
    *,
    open_min: bool = False,
    open_max: bool = False,
    null: str = "",
) -> Rule:
    """A finite number in a range (`open_*`: the bound itself excluded)."""
    if math.isinf(minimum) and math.isinf(maximum):
        expected = "a number"
    elif math.isinf(maximum):
        expected = f"a number {'>' if open_min else '>='} {minimum:g}"
    else:
        expected = f"a number in {'(' if open_min else '['}{minimum:g}, {maximum:g}{')' if open_max else ']'}"
    if null:
        expected += f" (or null for {null})"

    def accepts(value: Any) -> bool:
        if value is None:
            return bool(null)
        if not _is_number(value):
            return False
        above = value > minimum if open_min else value >= minimum
        below = value < maximum if open_max else value <= maximum
        return above and below

    return Rule(accepts, expected)


def one_of(*choices: Any) -> Rule:
    shown = ", ".join("null" if c is None else str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
    return Rule(lambda value: any(value == c and type(value) is type(c) for c in choices), f"one of {shown}")


def either(*rules: Rule) -> Rule:
    return Rule(lambda value: any(rule.accepts(value) for rule in rules), " or ".join(r.expected for r in rules))


def sequence_of(rule: Rule, length: int | None = None) -> Rule:
    count = f"{length} " if length else ""
    return Rule(
        lambda value: (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and (length is None or len(value) == length)
            and all(rule.accepts(v) for v in value)
        ),
        f"a list of {count}values, each {rule.expected}",
    )


def mapping_of(rule: Rule) -> Rule:
    return Rule(
        lambda value: isinstance(value, Mapping) and all(rule.accepts(v) for v in value.values()),
        f"a mapping whose values are each {rule.expected}",
    )


BOOL = one_of(True, False)
POSITIVE_INT = integer(1)
COUNT = integer(0)
DROPOUT = number(0, 1, open_max=True)
PROBABILITY = number(0, 1)
NON_NEGATIVE = number(0)
POSITIVE = number(0, open_min=True)
FREEZE = either(one_of("none", "all"), integer(0))
# LoRA's target_modules: names of linear layers; null (or []) = peft's default for the architecture
LORA_TARGETS = either(one_of(None), sequence_of(Rule(lambda v: isinstance(v, str) and bool(v), "a module name")))
# Lightning's limit_*_batches: an int is a number of batches, a float a share of the epoch.
BATCH_LIMIT = Rule(
    lambda v: v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
    "a number of batches (an integer >= 0), a share of them (a float in [0.0, 1.0]) or null for all",
)
VAL_CHECK_INTERVAL = Rule(
    lambda v: v is None or (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
    "a number of training batches (a positive integer), a share of the epoch (a float in (0.0, 1.0]) or null",
)
NUMPY_SEED_MAX = 2**32 - 1  # seed_everything replaces a seed outside numpy's [0, 2**32 - 1] by a random one


# Lightning's max_time: "DD:HH:MM:SS" or a dict of timedelta's days/hours/minutes/seconds.
_MAX_TIME_UNITS = ("days", "hours", "minutes", "seconds")
MAX_TIME = Rule(
    lambda v: (
        v is None
        or (isinstance(v, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", v) is not None)
        or (
            isinstance(v, Mapping)
            and bool(v)
            and all(unit in _MAX_TIME_UNITS and NON_NEGATIVE.accepts(n) for unit, n in v.items())
        )
    ),
    'a "DD:HH:MM:SS" string (e.g. "00:12:00:00"), a mapping of days/hours/minutes/seconds to numbers >= 0, or null',
)
# Trainer arguments that cmvl builds itself (train.py passes them): a value under trainer. would clash with cmvl's.
CMVL_SETS = {
    "logger": "choose the logger group instead (logger=csv, logger=tensorboard, ...)",
    "callbacks": "add callbacks under callbacks.<name> instead (+callbacks.swa._target_=...)",
    "plugins": "cmvl sets its own checkpoint I/O and cluster plugins",
    "default_root_dir": "cmvl uses the run directory; set hydra.run.dir (or paths.output_dir) instead",
}
CMVL_TRAINER_KEYS = ("requeue", "fsdp")  # cmvl's own settings under trainer. (popped before the Trainer is built)


def _trainer_parameters() -> tuple[str, ...]:
    import inspect

    import pytorch_lightning as pl

    return tuple(name for name in inspect.signature(pl.Trainer.__init__).parameters if name != "self")


def check_trainer_keys(cfg: DictConfig) -> None:
    """Every key under `trainer.` is a `Trainer` argument cmvl leaves to the user, or one of cmvl's own."""
    trainer = OmegaConf.select(cfg, "trainer", default=None)
    if not isinstance(trainer, DictConfig):
        return
    parameters = _trainer_parameters()
    for key in trainer:
        key = str(key)
        if key in CMVL_SETS:
            raise ConfigError(f"trainer.{key}: cmvl sets this Trainer argument itself; {CMVL_SETS[key]}")
        if key not in parameters and key not in CMVL_TRAINER_KEYS:
            close = difflib.get_close_matches(key, [*parameters, *CMVL_TRAINER_KEYS], n=1)
            hint = f" (did you mean trainer.{close[0]}?)" if close else ""
            raise ConfigError(
                f"trainer.{key}: not an argument of pytorch_lightning.Trainer{hint}; remove it (the Trainer's "
                "arguments: https://lightning.ai/docs/pytorch/stable/common/trainer.html)"
            )


def _accelerators() -> Rule:
    from pytorch_lightning.accelerators import AcceleratorRegistry

    names = ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
    return Rule(lambda v: isinstance(v, str) and v in names, f"one of {', '.join(names)}")


def _strategies() -> Rule:
    from pytorch_lightning.strategies import StrategyRegistry

    names = ("auto", *StrategyRegistry.available_strategies())
    return Rule(lambda v: not isinstance(v, str) or v in names, f"one of {', '.join(names)}")


# Order matters only for which of two mistakes is named first: keys that others interpolate come first
# (fusion.dropout is ${model.dropout}: a bad model.dropout is reported as model.dropout).
VALUE_RULES: dict[str, Rule | Callable[[], Rule]] = {
    "seed": integer(0, NUMPY_SEED_MAX),
    "verbosity": one_of("quiet", "info", "debug"),
    "model.dim": POSITIVE_INT,
    "model.dropout": DROPOUT,
    "ema.decay": number(0, 1, open_min=True, open_max=True, null="no moving average"),
    "distill.teacher": Rule(lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "a checkpoint path"),
    "distill.temperature": POSITIVE,
    "distill.alpha": PROBABILITY,
    "distill.feature_weight": NON_NEGATIVE,
    # data
    "data.batch_size": POSITIVE_INT,
    "data.eval_batch_size": POSITIVE_INT,
    "data.group_by_image": one_of(True, False, None),
    "data.max_rows_per_image": integer(1, null="no cap"),
    "data.num_workers": either(COUNT, one_of("auto")),
    "data.pin_memory": BOOL,
    "data.max_bad_fraction": number(0, 1, open_max=True),
    "data.image_cache_mb": NON_NEGATIVE,
    # data.image.* interpolate vision.* by default; users may set them directly
    "data.image.size": POSITIVE_INT,
    "data.image.mean": sequence_of(number(), 3),
    "data.image.std": sequence_of(POSITIVE, 3),
    "data.image.random_crop_scale": number(0, 1, open_min=True, null="a plain resize"),
    # dataset (each key where the chosen dataset has it)
    "dataset.num_images": mapping_of(POSITIVE_INT),
    "dataset.questions_per_image": POSITIVE_INT,
    "dataset.image_size": integer(16),
    "dataset.max_objects": POSITIVE_INT,
    "dataset.seed": COUNT,
    "dataset.split_seed": COUNT,
    "dataset.split_fractions": mapping_of(PROBABILITY),
    "dataset.split_scheme": one_of("official", "karpathy"),
    "dataset.karpathy_restval": BOOL,
    "dataset.missing_images": one_of("skip", "error"),
    "dataset.object_categories": POSITIVE_INT,
    "dataset.object_labels": one_of("names", "attributes"),
    "dataset.region_phrases": one_of("descriptions", "relationships"),
    # encoders
    "vision.image_size": POSITIVE_INT,
    "vision.mean": sequence_of(number(), 3),
    "vision.std": sequence_of(POSITIVE, 3),
    "vision.encoder.channels": POSITIVE_INT,
    "vision.encoder.stem_stride": POSITIVE_INT,
    "vision.encoder.downsample": COUNT,
    "vision.encoder.freeze": FREEZE,
    "text.max_length": POSITIVE_INT,
    "text.encoder.hidden_size": POSITIVE_INT,
    "text.encoder.layers": POSITIVE_INT,
    "text.encoder.heads": POSITIVE_INT,
    "text.encoder.intermediate_size": POSITIVE_INT,
    "text.encoder.dropout": DROPOUT,
    "text.encoder.freeze": FREEZE,
    "text.encoder.pretrained": BOOL,
    "adversarial.steps": COUNT,
    "adversarial.step_size": POSITIVE,
    "adversarial.norm_bound": number(0, open_min=True, null="no bound"),
    "adversarial.kl_weight": NON_NEGATIVE,
    "adversarial.start_step": COUNT,
    # LoRA adapters (cmvl/models/lora.py): text.lora, vision.lora, captioning's task.lm_lora
    "text.lora.r": integer(1, null="no LoRA"),
    "text.lora.alpha": POSITIVE,
    "text.lora.dropout": DROPOUT,
    "text.lora.target_modules": LORA_TARGETS,
    "vision.lora.r": integer(1, null="no LoRA"),
    "vision.lora.alpha": POSITIVE,
    "vision.lora.dropout": DROPOUT,
    "vision.lora.target_modules": LORA_TARGETS,
    "task.lm_lora.r": integer(1, null="no LoRA"),
    "task.lm_lora.alpha": POSITIVE,
    "task.lm_lora.dropout": DROPOUT,
    "task.lm_lora.target_modules": LORA_TARGETS,
    "text.tokenizer.vocab_size": POSITIVE_INT,
    "text.tokenizer.lowercase": BOOL,
    # fusion
    "fusion.layers": POSITIVE_INT,
    "fusion.heads": POSITIVE_INT,
    "fusion.dropout": DROPOUT,
    "fusion.co_attention": BOOL,
    "fusion.pool": one_of("mean", "cls"),
    "fusion.factors": POSITIVE_INT,
    "fusion.mfb_dim": integer(1, null="model.dim"),
    "fusion.glimpses": POSITIVE_INT,
    "fusion.glimpse_size": POSITIVE_INT,
    "fusion.min_scale": number(0, 1, open_min=True, open_max=True),
    "fusion.hidden_mult": POSITIVE_INT,
    "fusion.ff_mult": POSITIVE_INT,
    "fusion.text_window": integer(1, null="all pairs"),
    "fusion.image_edges": one_of("grid", "full"),
    # tasks (also each multitask member's)
    "task.layers": POSITIVE_INT,
    "task.heads": POSITIVE_INT,
    "task.max_length": POSITIVE_INT,
    "task.label_smoothing": number(0, 1, open_max=True),
    "task.beam_size": POSITIVE_INT,
    "task.length_penalty": number(),
    "task.meteor": one_of("eval", "always", "never"),
    "task.text_max_length": POSITIVE_INT,
    "task.dropout": DROPOUT,
    "task.decoder": one_of("transformer", "pretrained", "lstm"),
    "task.lstm.attention": one_of("none", "soft"),
    "task.lstm.hidden": POSITIVE_INT,
    "task.lstm.attention_weight": NON_NEGATIVE,
    "task.lm_conditioning": one_of("cross_attention", "prefix"),
    "task.lm_pretrained": BOOL,
    "task.lm_freeze": FREEZE,
    "task.l1_weight": NON_NEGATIVE,
    "task.giou_weight": NON_NEGATIVE,
    "task.iou_threshold": number(0, 1, open_min=True),
    "task.drop_ambiguous": BOOL,
    "task.head_hidden_mult": POSITIVE_INT,
    "task.embed_dim": POSITIVE_INT,
    "task.temperature": POSITIVE,
    "task.learn_temperature": BOOL,
    "task.top_k": integer(1, null="all"),
    "task.itm": BOOL,
    "task.itm_weight": NON_NEGATIVE,
    "task.rerank_k": COUNT,
    # tagging's losses | retrieval's (each task refuses the other's in one line)
    "task.loss": one_of("asymmetric", "bce", "infonce", "triplet"),
    "task.margin": POSITIVE,
    "task.triplet_warmup_steps": COUNT,
    "task.gamma_neg": NON_NEGATIVE,
    "task.gamma_pos": NON_NEGATIVE,
    "task.clip": number(0, 1, open_max=True),
    "task.threshold": PROBABILITY,
    "task.min_answer_count": POSITIVE_INT,
    "task.answer_mode": one_of("classify", "generate"),
    "task.decoder_layers": POSITIVE_INT,
    "task.decoder_heads": POSITIVE_INT,
    "task.answer_max_length": POSITIVE_INT,
    "task.weights": mapping_of(NON_NEGATIVE),
    "task.sampling": one_of("proportional", "round_robin", "weighted"),
    # optimisation
    "optim.optimizer.lr": POSITIVE,
    "optim.optimizer.betas": sequence_of(number(0, 1, open_max=True), 2),
    "optim.optimizer.eps": POSITIVE,
    "optim.optimizer.fused": one_of(True, False, None),
    "optim.weight_decay": NON_NEGATIVE,
    "optim.scheduler.warmup_ratio": PROBABILITY,
    "optim.scheduler.warmup_steps": integer(0, null="warmup_ratio"),
    "optim.scheduler.min_lr_ratio": PROBABILITY,
    # Lightning Trainer (its documented special values)
    "trainer.precision": one_of(
        "64",
        "64-true",
        "32",
        "32-true",
        "16",
        "16-mixed",
        "16-true",
        "bf16",
        "bf16-mixed",
        "bf16-true",
        "transformer-engine",
        64,
        32,
        16,
    ),
    "trainer.accelerator": _accelerators,
    "trainer.strategy": _strategies,
    "trainer.fsdp.blocks": sequence_of(Rule(lambda v: isinstance(v, str), "a module class name")),
    "trainer.fsdp.mixed_precision": one_of("auto", "bf16", "fp16", None),
    "trainer.fsdp.activation_checkpointing": BOOL,
    "trainer.fsdp.reshard_after_forward": BOOL,
    "trainer.num_nodes": POSITIVE_INT,
    "trainer.max_epochs": integer(1, special={-1: "no limit"}, null="the task's default budget"),
    "trainer.min_epochs": integer(0, null="none"),
    "trainer.max_steps": integer(1, special={-1: "no limit"}),
    "trainer.min_steps": integer(0, null="none"),
    "trainer.gradient_clip_val": number(0, null="no clipping"),
    "trainer.gradient_clip_algorithm": one_of("norm", "value", None),
    "trainer.accumulate_grad_batches": POSITIVE_INT,
    "trainer.log_every_n_steps": POSITIVE_INT,
    "trainer.check_val_every_n_epoch": integer(1, null="validation by val_check_interval only"),
    "trainer.val_check_interval": VAL_CHECK_INTERVAL,
    "trainer.limit_train_batches": BATCH_LIMIT,
    "trainer.limit_val_batches": BATCH_LIMIT,
    "trainer.limit_test_batches": BATCH_LIMIT,
    "trainer.limit_predict_batches": BATCH_LIMIT,
    "trainer.num_sanity_val_steps": integer(0, special={-1: "all validation batches"}),
    "trainer.deterministic": one_of(True, False, "warn", None),
    "trainer.benchmark": one_of(True, False, None),
    "trainer.enable_progress_bar": BOOL,
    "trainer.fast_dev_run": either(BOOL, COUNT),
    "trainer.max_time": MAX_TIME,
    "trainer.overfit_batches": Rule(
        lambda v: (_is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
        "a number of batches (an integer >= 0) or a share of them (a float in [0.0, 1.0])",
    ),
    "trainer.detect_anomaly": BOOL,
    "trainer.enable_model_summary": one_of(True, False, None),
    "trainer.enable_autolog_hparams": BOOL,
    # cmvl always adds its checkpoint callbacks (Lightning refuses them with enable_checkpointing=false or barebones)
    "trainer.enable_checkpointing": one_of(True, None),
    "trainer.barebones": one_of(False),
    "trainer.reload_dataloaders_every_n_epochs": COUNT,
    "trainer.sync_batchnorm": BOOL,
    "trainer.use_distributed_sampler": BOOL,
    "trainer.inference_mode": BOOL,
    "trainer.profiler": one_of("simple", "advanced", "pytorch", "xla", None),
    "trainer.model_registry": Rule(lambda v: v is None or isinstance(v, str), "a model registry name or null"),
    "trainer.requeue": BOOL,
    # checkpoints and per-run outputs
    "init_from": Rule(lambda v: v is None or (isinstance(v, str) and bool(v.strip())), "a checkpoint path or null"),
    "checkpoint.save_last": BOOL,
    "checkpoint.every_n_steps": integer(1, null="every epoch end"),
    "checkpoint.keep_last": integer(2),  # one survives a crash while the next is written
    "samples.count": COUNT,
    "samples.attention": BOOL,
    "samples.every_n_epochs": POSITIVE_INT,
}

# (width, heads, condition): the width must split evenly into the attention heads that cmvl builds with it;
# condition (key, value): only where that part is built.
WIDTH_HEADS: tuple[tuple[str, str, tuple[str, Any] | None], ...] = (
    ("fusion.dim", "fusion.heads", None),
    ("model.dim", "task.heads", ("task.decoder", "transformer")),
    ("model.dim", "task.decoder_heads", ("task.answer_mode", "generate")),
    ("text.encoder.hidden_size", "text.encoder.heads", None),
)


def check_values(cfg: DictConfig) -> None:
    """Raise `ConfigError` naming the first key whose value breaks its rule, or a width its heads do not divide."""
    check_trainer_keys(cfg)
    for pattern, rule in VALUE_RULES.items():
        rule = rule if isinstance(rule, Rule) else rule()
        for key in _expand(cfg, pattern):
            value = _select(cfg, key)
            if value is not _ABSENT and not rule.accepts(value):
                raise ConfigError(f"{_named(cfg, key)}={_shown(value)}: must be {rule.expected}")
    for width_pattern, heads_pattern, condition in WIDTH_HEADS:
        for prefix in task_prefixes(cfg) if heads_pattern.startswith("task.") else [""]:
            width_key, heads_key = (_in_member(p, prefix) for p in (width_pattern, heads_pattern))
            width, heads = _select(cfg, width_key), _select(cfg, heads_key)
            if condition is not None and _select(cfg, _in_member(condition[0], prefix)) != condition[1]:
                continue
            if _is_int(width) and _is_int(heads) and width % heads:
                multiple = -(-width // heads) * heads
                raise ConfigError(
                    f"{_named(cfg, width_key)}={width} is not divisible by {heads_key}={heads}: set "
                    f"{_named(cfg, width_key)} to a multiple of {heads} (e.g. {multiple}) or {heads_key} to a divisor "
                    f"of {width}"
                )


def task_prefixes(cfg: DictConfig) -> list[str]:
    """ "task." and each multitask member's "task.tasks.<name>."."""
    tasks = OmegaConf.select(cfg, "task.tasks", default=None)
    members = [f"task.tasks.{name}." for name in tasks] if isinstance(tasks, DictConfig) else []
    return ["task.", *members]


def _in_member(key: str, prefix: str) -> str:
    return prefix + key[len("task.") :] if prefix and key.startswith("task.") else key


def _expand(cfg: DictConfig, pattern: str) -> list[str]:
    return [_in_member(pattern, p) for p in task_prefixes(cfg)] if pattern.startswith("task.") else [pattern]


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key}: {str(err).strip().splitlines()[0]}") from None
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def _named(cfg: DictConfig, key: str) -> str:
    """The key a user sets to change this value: `model.dim` for `fusion.dim: ${model.dim}`."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig) and OmegaConf.is_interpolation(node, leaf):
        text = str(node._get_node(leaf)._value())
        plain = text.startswith("${") and text.endswith("}") and text.count("${") == 1
        if plain and ":" not in text and not text.startswith("${."):
            return text[2:-1]
    return key


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if not isinstance(value, str) or value else "''"

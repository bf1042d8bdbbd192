"""Which config keys `cmvl eval` may override: what evaluation reads and how it scores, never what the model is.

The model is rebuilt from the checkpoint's config and then given the checkpoint's weights, so a key that changes a
parameter's shape (model.*, vision.*, text.*, fusion.*), the task, or only training (optimiser, budget, loss
weights) is refused: it would either not load or silently evaluate something else than what was trained.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from omegaconf import DictConfig

from cmvl.errors import ConfigError

# What evaluation reads and where it runs. Patterns (fnmatch) over the override's full key.
READ_KEYS = (
    "dataset.split",
    "dataset.root",
    "dataset.images",
    "dataset.path",  # hf: a local folder (or hub name) of the same dataset
    "dataset.vg_root",
    "dataset.split_file",
    "dataset.karpathy_file",
    "dataset.image_pattern",
    "dataset.missing_images",
    "dataset.class_label",  # shapes: which classes table (shape | color | color_shape)
    "data.eval_batch_size",
    "data.num_workers",
    "data.pin_memory",
    "data.image_cache_mb",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.precision",
    "trainer.enable_progress_bar",
    "trainer.deterministic",
    "trainer.benchmark",
    # Robustness and zero-shot evaluation settings, wherever a config puts them.
    "attack.*",
    "zero_shot.*",
    "eval.*",
)
# Each task's evaluation options (cmvl/conf/task/*.yaml): decoding, ranking and scoring settings, not parameter shapes.
# (VQA's top_k sizes the answer vocabulary, so it is not one; retrieval's and tagging's top_k only list or score.)
TASK_EVAL_OPTIONS = {
    "cmvl.tasks.vqa.VQATask": ("beam_size", "answer_max_length", "vqa_eval"),
    "cmvl.tasks.caption.CaptionTask": ("beam_size", "length_penalty", "max_length", "meteor"),
    "cmvl.tasks.retrieval.RetrievalTask": ("top_k", "rerank_k"),
    "cmvl.tasks.tagging.TaggingTask": ("threshold", "top_k"),
    "cmvl.tasks.grounding.GroundingTask": ("iou_threshold",),
    "cmvl.tasks.classification.ClassificationTask": ("top_k",),
    "cmvl.tasks.detection.DetectionTask": ("queries", "max_detections"),  # queries: [texts] to score it on instead
}
TASK_EVAL_PATTERNS = ("attack*", "zero_shot*")  # any task's robustness / zero-shot options


def check_eval_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuses, in one line, the first override that is not an evaluation option of the checkpoint's config."""
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if not is_eval_option(cfg, key):
            raise ConfigError(
                f"{key}: cmvl eval cannot override it (the checkpoint fixes the model, its task and its training); "
                f"it overrides what evaluation reads ({', '.join(READ_KEYS[:3])}, data.eval_batch_size, "
                f"trainer.accelerator/devices/precision …) and the task's evaluation options "
                f"({', '.join(task_eval_keys(cfg)) or 'none for this task'}); to change the model, train again"
            )


def is_eval_option(cfg: DictConfig, key: str) -> bool:
    return any(fnmatchcase(key, pattern) for pattern in (*READ_KEYS, *task_eval_keys(cfg)))


def task_eval_keys(cfg: DictConfig) -> list[str]:
    """Full keys (patterns) of the evaluation options of the config's task, or of each member of a multitask."""
    task = cfg.get("task")
    if not isinstance(task, DictConfig):
        return []
    members = task.get("tasks")
    places = {f"task.tasks.{name}": node for name, node in members.items()} if isinstance(members, DictConfig) else {}
    places = places or {"task": task}
    keys = []
    for place, node in places.items():
        options = TASK_EVAL_OPTIONS.get(str(node.get("_target_")), ())
        keys += [f"{place}.{option}" for option in (*options, *TASK_EVAL_PATTERNS)]
    return keys

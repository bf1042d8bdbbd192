"""The `callbacks` group: extra Lightning callbacks added to cmvl's own (checkpoints, RNG state, preemption, sample
pictures, progress), which always stay.

A callback's `monitor: null` / `mode: null` is the task's checkpoint metric / its mode, known once the task is
built: one statement (the task's `monitor_key`, `monitor_mode`) serves best.ckpt and early stopping alike.
Pre-flight checks what would otherwise fail mid-run: a monitored key the task does not log (Lightning raises at the
first validation) and a LearningRateMonitor without a logger (Lightning raises when fit starts).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from cmvl.errors import ConfigError

LR_MONITOR = "pytorch_lightning.callbacks.LearningRateMonitor"


def callback_nodes(cfg: DictConfig) -> dict[str, DictConfig]:
    """name → config of each extra callback (`callbacks.<name>`; a null entry is switched off)."""
    nodes = OmegaConf.select(cfg, "callbacks", default=None)
    if not isinstance(nodes, DictConfig):
        return {}
    return {str(name): node for name, node in nodes.items() if isinstance(node, DictConfig)}


def monitor_arguments(node: DictConfig, monitor: str, mode: str) -> dict[str, Any]:
    """The arguments that fill a callback's null `monitor` / `mode` with the task's checkpoint metric and its mode
    (max: every metric cmvl's tasks log is better higher)."""
    extra: dict[str, Any] = {}
    if "monitor" in node and node.monitor is None:
        extra["monitor"] = monitor
    if "mode" in node and node.mode is None:
        extra["mode"] = mode
    return extra


def has_lr_monitor(cfg: DictConfig) -> bool:
    return any(node.get("_target_") == LR_MONITOR for node in callback_nodes(cfg).values())


def check_callbacks(cfg: DictConfig, metric_keys: list[str] | None) -> None:
    """Raise `ConfigError` for a LearningRateMonitor without a logger, or a monitored metric the task does not log
    (`metric_keys`: the task's validation metrics; None: not checked)."""
    loggers = OmegaConf.select(cfg, "logger", default=None)
    has_logger = isinstance(loggers, DictConfig) and any(node is not None for node in loggers.values())
    nodes = OmegaConf.select(cfg, "callbacks", default=None)
    for name, node in nodes.items() if isinstance(nodes, DictConfig) else []:
        if node is not None and not isinstance(node, DictConfig):
            raise ConfigError(
                f"callbacks.{name}={node}: a callback is a mapping with a _target_ (or null to switch it off); "
                "choose the group's callbacks with callbacks=<name> or callbacks=[a,b]"
            )
    for name, node in callback_nodes(cfg).items():
        if node.get("_target_") == LR_MONITOR and not has_logger:
            raise ConfigError(
                f"callbacks.{name}: LearningRateMonitor logs to a logger, and this run has none (choose one: "
                "logger=csv, logger=tensorboard, ...)"
            )
        monitor = node.get("monitor") if "monitor" in node else None
        if metric_keys is not None and monitor is not None and monitor not in metric_keys:
            raise ConfigError(
                f"callbacks.{name}.monitor={monitor}: not a metric this task logs ({', '.join(metric_keys)}; "
                "null = the task's checkpoint metric)"
            )

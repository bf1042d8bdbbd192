"""`cmvl eval` in three steps: restore the run from its checkpoint alone (`cmvl.run`), score one split through a
Lightning `Trainer` (`score_split`), write metrics.json and the predictions files (`write_results`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cmvl.evaluation.attacks import split_attack_overrides
from cmvl.evaluation.results import write_results
from cmvl.evaluation.score import SplitScores, score_split
from cmvl.run import restore_run, run_config
from cmvl.training.checkpoints import load_checkpoint

__all__ = ["SplitScores", "evaluate_checkpoint", "score_split", "write_results"]


def evaluate_checkpoint(
    ckpt_path: str | Path,
    *,
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Scores the split `dataset.split` names (the checkpoint's config with `overrides`) and writes the results
    next to the checkpoint or into `out_dir`; returns what metrics.json holds. The trainer settings (accelerator,
    precision) are the config's: the restored model stays on the CPU until the Trainer moves it."""
    import torch

    ckpt_path = Path(ckpt_path)
    attack, overrides = split_attack_overrides(overrides)  # attack=pgd attack.eps=2/255: not config keys
    checkpoint = load_checkpoint(ckpt_path)
    cfg = run_config(checkpoint, list(overrides))
    run = restore_run(ckpt_path, checkpoint, cfg, device=torch.device("cpu"))
    scores = score_split(run, cfg.dataset.split, attack=attack)
    extra = {"attack": attack.describe()} if attack is not None else {}
    return write_results(scores, Path(out_dir) if out_dir else ckpt_path.parent, checkpoint=ckpt_path, extra=extra)

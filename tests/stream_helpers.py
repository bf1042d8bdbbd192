"""Callbacks the streamed-data tests inject with `+callbacks.<name>._target_=tests.stream_helpers.<Class>`."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


class RecordCaptions(pl.Callback):
    """Appends the captions of every training batch to `path`, one line per step (a streamed batch's `index` is
    its position in the batch, so the captions say which samples it holds)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        with self.path.open("a") as f:
            f.write(" | ".join(batch.texts) + "\n")


def preempted_and_resumed(overrides: list[str], *, step: int, texts: Path) -> tuple[dict, list[str]]:
    """Trains with `overrides` until SIGTERM after step `step`, then again with `resume=auto`: the second run's
    summary and the texts of every training batch of both runs, one line per step (recorded in `texts`)."""
    import pytest

    from cmvl.config.compose import compose_config
    from cmvl.errors import UserError
    from cmvl.training.train import run_training

    record = ["+callbacks.texts._target_=tests.stream_helpers.RecordCaptions", f"+callbacks.texts.path={texts}"]
    run = [*overrides, "extra_target_prefixes=[tests.]", *record]
    stop = ["+callbacks.stop._target_=tests.resume_helpers.SignalAtStep", f"+callbacks.stop.step={step}"]
    with pytest.raises(UserError, match=f"preempted: saved step {step}"):
        run_training(compose_config([*run, *stop]))
    summary = run_training(compose_config([*run, "resume=auto"]))
    return summary, texts.read_text().splitlines()

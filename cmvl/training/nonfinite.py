"""A training loss that is NaN or infinite, on any process: all processes agree on it in the same step, before
any backward pass or optimizer step, and then all stop (`nonfinite_loss.action=stop`) or all skip the step
(`skip`: the optimizer step changes no parameter and no optimizer state; the schedule moves on) up to `max_skips`
times in the run. Agreeing first is what keeps DDP from hanging: no process waits in a gradient all-reduce that
another one never joins. With gradient accumulation a skip drops the whole accumulated step; with fp16 the
gradient scaler also sees the skipped step's non-finite gradients and lowers its scale, as it would anyway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cmvl.config.nonfinite import ACTIONS, check_settings
from cmvl.errors import UserError
from cmvl.log import get_logger

if TYPE_CHECKING:  # torch is imported where a loss is checked
    import pytorch_lightning as pl
    import torch

__all__ = ["ACTIONS", "EXIT_NONFINITE", "NonFiniteGuard", "NonFiniteLoss", "check_settings"]

EXIT_NONFINITE = 4
log = get_logger(__name__)


class NonFiniteLoss(UserError):
    """The run stopped at a step whose loss was not finite; the checkpoints written before it stay."""

    exit_code = EXIT_NONFINITE


class NonFiniteGuard:
    def __init__(self, *, action: str = "stop", max_skips: int = 10) -> None:
        check_settings(action, max_skips)
        self.action, self.max_skips = action, max_skips
        self.skipped = 0  # steps skipped so far in this run (kept in checkpoints, so a resume counts on)

    def should_skip(self, module: pl.LightningModule, loss: torch.Tensor, batch_idx: int) -> bool:
        """True: every process skips this step. Raises `NonFiniteLoss` on every process when the run stops."""
        import torch

        # One gather of every process's loss value: the processes with a bad loss, known to all of them.
        losses = module.all_gather(loss.detach().float().reshape(1)).reshape(-1)
        bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
        if not bad:
            return False
        if losses.numel() > 1:
            values = ", ".join(f"{losses[r].item()} on process {r}" for r in bad)
        else:
            values = str(losses[0].item())
        where = f"step {module.global_step} (epoch {module.current_epoch}, batch {batch_idx})"
        if self.action == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            if module.global_rank == 0:
                log.warning(f"skipped training {where}: loss {values} ({self.skipped} of at most {self.max_skips})")
            return True
        tail = (
            f"; {self.max_skips} steps skipped already (nonfinite_loss.max_skips)"
            if self.action == "skip"
            else " (nonfinite_loss.action=skip skips such steps)"
        )
        raise NonFiniteLoss(f"training loss {values} at {where}: stopped before the optimizer step{tail}")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))

"""A checkpoint's task (with its learnt state and tokenizer) and its model weights: what a resumed or initialised
training run takes from a checkpoint, and what `cmvl.run.load_run` builds a run from. Here in the training package,
which `cmvl.run` imports: training does not import `cmvl.run`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from cmvl.errors import CheckpointError, UserError
from cmvl.training.checkpoint_schema import CHECKPOINT_KEY, STATE_PREFIX

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from cmvl.tasks.base import Task


def restore_task(cfg: DictConfig, checkpoint: dict[str, Any], path: Path | str) -> tuple[Task, PreTrainedTokenizerFast]:
    """The task `cfg` names with the learnt state the checkpoint saved (answer vocabulary, categories …), and the
    checkpoint's tokenizer, bound to the task. The data state is the checkpoint's, never rebuilt from a dataset."""
    from cmvl.data.text import tokenizer_from_state
    from cmvl.training.build import build_task

    state = checkpoint[CHECKPOINT_KEY]["data_state"]
    task = build_task(cfg)
    try:  # the structure check restored these on cmvl's own tasks; a trusted task of the user's is first met here
        task.load_state_dict(state["task"])
        tokenizer = tokenizer_from_state(state["tokenizer"])
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure means the file's state is not what cmvl wrote
        raise CheckpointError(
            f"checkpoint {path}: its task or tokenizer state does not restore ({type(err).__name__}: "
            f"{str(err).strip()[:150]}); use a checkpoint cmvl train wrote"
        ) from None
    task.bind_tokenizer(tokenizer)
    return task, tokenizer


def model_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's model weights under the model's own names (the LightningModule's `model.` prefix removed)."""
    return {k.removeprefix(STATE_PREFIX): v for k, v in state_dict.items() if k.startswith(STATE_PREFIX)}

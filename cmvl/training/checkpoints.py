"""Reading cmvl checkpoints safely (`weights_only=True`) with one clear error for a bad file.

A checkpoint is checked when it is read, before anything is built from it: its sections have the types cmvl wrote,
the RNG, tokenizer and task states it carries restore, and (`state_dict_errors`) its weights fit the model. A file
that fails any check is refused in one line that names it, whether `cmvl eval` or `cmvl train resume=` reads it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmvl.errors import CheckpointError, UserError
from cmvl.training.checkpoint_schema import upgrade_checkpoint
from cmvl.training.lightning_compat import wrap_restore_steps
from cmvl.training.lit_module import CHECKPOINT_KEY

# (place in the checkpoint, the type(s) it must have, required). Lightning's own sections are checked only for
# their type: Lightning reads them. `cmvl_rng` is resume.RNG_KEY (resume imports this module).
SECTIONS: tuple[tuple[str, type | tuple[type, ...], bool], ...] = (
    ("state_dict", dict, True),
    ("global_step", int, True),
    ("epoch", int, False),
    ("loops", dict, False),
    ("callbacks", dict, False),
    ("optimizer_states", list, False),
    ("lr_schedulers", list, False),
    ("cmvl_rng", list, False),
    (CHECKPOINT_KEY, dict, True),
    (f"{CHECKPOINT_KEY}.config", dict, True),
    (f"{CHECKPOINT_KEY}.data_state", dict, True),
    (f"{CHECKPOINT_KEY}.data_state.task", dict, True),
    (f"{CHECKPOINT_KEY}.data_state.tokenizer", (str, dict), True),
    (f"{CHECKPOINT_KEY}.val_history", list, False),
    (f"{CHECKPOINT_KEY}.nonfinite", dict, False),
    (f"{CHECKPOINT_KEY}.epoch_loss", (list, tuple), False),
)
# Counters a run only ever counts up from 0 (a negative one would make the resumed run's loops start before it).
NON_NEGATIVE = ("global_step", "epoch")
# The metadata entry of a `cmvl export format=safetensors` file that holds the run's cmvl section (JSON).
SAFETENSORS_RUN_KEY = "cmvl_run"
# Config sections every run has, as mappings (the model is built from them; a missing one is a crafted file).
CONFIG_SECTIONS = ("task", "model", "data", "text", "vision", "fusion", "trainer", "dataset")


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = _read_safetensors(path) if path.suffix == ".safetensors" else _torch_load(path, mmap)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - unpickling arbitrary bytes can raise anything (IndexError, KeyError …)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"not a readable checkpoint: {path} ({reason[:200]})") from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"not a cmvl checkpoint (no '{CHECKPOINT_KEY}' section): {path}")
    upgrade_checkpoint(checkpoint, path=path)  # an older cmvl's layout becomes this one's; a newer one is refused
    problem = structure_problem(checkpoint)
    if problem:
        raise CheckpointError(f"not a valid cmvl checkpoint: {path}: {problem}; use a checkpoint cmvl train wrote")
    return checkpoint


def _torch_load(path: Path, mmap: bool) -> Any:
    """`torch.load(weights_only=True)`; a file of int8 weights (`cmvl compress`) holds torchao's tensor classes,
    which torchao adds to the safe loader's allowed globals when it is imported: then it is read again."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - see load_checkpoint
        if "torchao." not in str(err):
            raise
    import torchao.quantization  # noqa: F401 - registers its tensor classes as safe globals

    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _read_safetensors(path: Path) -> dict[str, Any]:
    """A `cmvl export format=safetensors` file as a checkpoint: its weights (no pickle) and, from the file's
    metadata, the cmvl section (config, tokenizer, task state) as JSON."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        record = json.loads((f.metadata() or {}).get(SAFETENSORS_RUN_KEY, "null"))
        if not isinstance(record, dict):
            raise CheckpointError(f"not a cmvl safetensors file (no '{SAFETENSORS_RUN_KEY}' metadata): {path}")
        return {**record, "state_dict": {k: f.get_tensor(k) for k in f.keys()}}


def structure_problem(checkpoint: dict[str, Any]) -> str | None:
    """What is wrong with a loaded checkpoint's structure (None: nothing): a section of the wrong type, a weight
    that is not a tensor, a config without its sections, or an RNG / tokenizer / task state that does not restore."""
    for place, kinds, required in SECTIONS:
        found, value = _lookup(checkpoint, place)
        if not found:
            if required:
                return f"'{place}' is missing"
            continue
        if not isinstance(value, kinds) or isinstance(value, bool):
            return f"'{place}' is a {type(value).__name__}, not a {_names(kinds)}"
    negative = next((place for place in NON_NEGATIVE if checkpoint.get(place, 0) < 0), None)
    if negative:
        return f"'{negative}' is negative ({checkpoint[negative]})"
    odd = next((k for k in checkpoint["state_dict"] if not isinstance(k, str)), None)
    if odd is not None:
        return f"state_dict has a key {odd!r} that is not a weight's name (a str)"
    bad = next((k for k, v in checkpoint["state_dict"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        return f"state_dict['{bad}'] is not a tensor"
    config = checkpoint[CHECKPOINT_KEY]["config"]
    missing = next((s for s in CONFIG_SECTIONS if not isinstance(config.get(s), dict)), None)
    if missing:
        return f"its config has no '{missing}' section"
    if not isinstance(config["task"].get("_target_"), str):
        return "its config has no task._target_"
    interpolated = _interpolation_in(config)
    if interpolated:
        return (
            f"its config value {interpolated} is an interpolation (cmvl saves resolved values), which is not resolved"
        )
    return _restore_problem(checkpoint)


def _interpolation_in(node: Any, at: str = "") -> str | None:
    """The first key (dotted) of a saved config whose string value holds an OmegaConf interpolation `${...}`: cmvl
    writes configs resolved, so one is crafted, and OmegaConf would resolve it when the config is read (reading
    environment variables, or running any resolver registered in the process)."""
    if isinstance(node, str):
        return at or "(root)" if "${" in node else None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found = _interpolation_in(key, f"{at}[key {key!r}]") or _interpolation_in(
            value, f"{at}.{key}" if at else str(key)
        )
        if found:
            return found
    return None


def _restore_problem(checkpoint: dict[str, Any]) -> str | None:
    """Restores what a resume or an evaluation restores from the checkpoint (RNG states, tokenizer, the task's
    vocabulary) on throwaway objects: anything these raise means the file's content is not what cmvl wrote."""
    from cmvl.data.text import tokenizer_from_state
    from cmvl.training.resume import restore_rng_state

    state = checkpoint[CHECKPOINT_KEY]
    try:
        tokenizer_from_state(state["data_state"]["tokenizer"])
    except Exception as err:  # noqa: BLE001 - the tokenizer library raises bare Exceptions on a bad JSON
        return f"its tokenizer state does not load ({_reason(err)})"
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        for rng in checkpoint.get("cmvl_rng") or []:
            restore_rng_state(rng)
    except Exception as err:  # noqa: BLE001 - any failure is a malformed state
        return f"its RNG state does not restore ({_reason(err)})"
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
    return _task_state_problem(state["config"], state["data_state"]["task"])


def _task_state_problem(config: dict[str, Any], task_state: dict[str, Any]) -> str | None:
    """Loads the task state (answer vocabulary, categories …) into the task the config names. Only cmvl's own tasks
    are built here: a checkpoint cannot make this check import anything (the trust of `extra_target_prefixes` is
    the command line's, given when the run is built)."""
    from omegaconf import OmegaConf

    from cmvl.training.build import build_task

    try:
        cfg = OmegaConf.create({**config, "extra_target_prefixes": []})
        task = build_task(cfg)
    except Exception:  # noqa: BLE001 - a user's own task (untrusted here) or a config the config checks report
        return None
    try:
        task.load_state_dict(task_state)
    except Exception as err:  # noqa: BLE001 - any failure is a malformed task state
        return f"its task state does not fit task {config['task']['_target_']} ({_reason(err)})"
    return None


# PyTorch's errors for weights (Module.load_state_dict) and optimizer state (Optimizer.load_state_dict) that do
# not fit what this config builds.
STATE_DICT_ERROR = re.compile(
    r"^(Error\(s\) in loading state_dict for \w+:|loaded state dict (contains a parameter group|has a different))"
)


@contextmanager
def state_dict_errors(checkpoint: Path | str | Callable[[], Path | str | None]) -> Iterator[None]:
    """Turns PyTorch's error for weights that do not fit the model (missing or unexpected keys, other shapes) into
    one line naming the checkpoint (`checkpoint`, or a function that finds it, called only on an error) and the
    first mismatching keys and shapes."""
    try:
        yield
    except (RuntimeError, ValueError) as err:
        text = str(err)
        if not STATE_DICT_ERROR.match(text):
            raise
        name = checkpoint() if callable(checkpoint) else checkpoint
        details = [line.strip() for line in text.split("\n")[1:] if line.strip()] or [f"optimizer state: {text}"]
        first = "; ".join(_first_keys(line) for line in details[:2])
        raise CheckpointError(
            f"checkpoint {name or '(the resumed one)'} does not fit the model this config builds: {first} (was it "
            "written with other model.*/vision.*/text.*/fusion.* settings or another task?)"
        ) from None


def refuse_unrestorable(trainer: Any, checkpoint: Path | str) -> None:
    """Makes any error raised while `trainer` restores its state from `checkpoint` one CheckpointError naming the
    file: a crafted file passes the structure check yet holds, say, loop or scheduler states that Lightning's
    restore code (or a hook's) fails on with an AttributeError, KeyError … Weights that do not fit keep
    `state_dict_errors`' message; errors already meant for the user pass as they are."""

    def guarded(restore: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                with state_dict_errors(checkpoint):
                    return restore(*args, **kwargs)
            except UserError:
                raise
            except Exception as err:  # noqa: BLE001 - any failure restoring a file's states means a malformed file
                raise CheckpointError(
                    f"checkpoint {checkpoint} does not restore a training state ({_reason(err)}); "
                    "use a checkpoint cmvl train wrote"
                ) from None

        return run

    wrap_restore_steps(trainer, guarded)  # the weights, the modules' and callbacks' states, loops, optimizers


def _first_keys(line: str, keep: int = 3) -> str:
    """A line of PyTorch's list of missing / unexpected keys, cut to its first `keep` keys."""
    head, sep, keys = line.partition(": ")
    names = keys.split(", ")
    if not sep or len(names) <= keep:
        return line[:300]
    return f"{head}: {', '.join(names[:keep])} and {len(names) - keep} more"


def _lookup(checkpoint: dict[str, Any], place: str) -> tuple[bool, Any]:
    value: Any = checkpoint
    for part in place.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _names(kinds: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:150]}" if text else type(err).__name__

"""Directory names that are functions of what a sweep runs, so re-running the same command finds its own jobs.

- the sweep directory of `cmvl train -m ...` / `hparams_search=...`: `multirun/<overrides>-<hash>` from the
  command's overrides (unless the user sets `hydra.sweep.dir`);
- each job's directory inside it: its own overrides (`hydra.job.override_dirname`, e.g.
  `fusion=concat,seed=1`) less those every job of the command shares, made safe as one path component. A job
  number would not do: an Optuna re-run or a grid with one more value numbers the same configuration
  differently.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from omegaconf import OmegaConf

from cmvl.config.overrides import user_overrides

SWEEP_ROOT = "multirun"
JOB_NAME_EXCLUDED = ("resume", "hparams_search")  # overrides that never name a job (cmvl/conf/train.yaml has them too)
MAX_NAME = 100  # longer names keep their first characters and end in a hash of the whole name
_UNSAFE = re.compile(r"[^A-Za-z0-9=,._+@:\-\[\]]+")


def safe_dirname(text: str, *, max_length: int = MAX_NAME) -> str:
    """`text` as one path component: unsafe characters (`/`, spaces, quotes) become `_`, and a name over
    `max_length` characters becomes its head plus a hash of all of it (distinct inputs stay distinct)."""
    if not text:
        return "defaults"  # a job that differs from its sweep's other jobs by nothing (a sweep of one job)
    name = _UNSAFE.sub("_", text).strip("._") or "_"
    if len(name) <= max_length and name == text:
        return name
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{name[: max_length - 9]}-{digest}"


def sweep_dir_for(overrides: list[str]) -> str:
    """The sweep directory of a command line: the same overrides (in any order) give the same directory,
    `multirun/<overrides as letters, digits and _>-<hash of the overrides>`."""
    user = " ".join(sorted(user_overrides(overrides)))
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", user).strip("._")[:60] or "defaults"
    return f"{SWEEP_ROOT}/{slug}-{hashlib.sha1(user.encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    """`${cmvl_dirname:...}`: used by cmvl/conf/train.yaml's `hydra.sweep.subdir`; `${cmvl_run_suffix:}`: by its
    `hydra.run.dir` (cached like `${now:}`, so one config resolves it to one value)."""
    if not OmegaConf.has_resolver("cmvl_dirname"):
        OmegaConf.register_new_resolver("cmvl_dirname", lambda text: safe_dirname(str(text)))
    if not OmegaConf.has_resolver("cmvl_run_suffix"):
        OmegaConf.register_new_resolver("cmvl_run_suffix", lambda: secrets.token_hex(3), use_cache=True)

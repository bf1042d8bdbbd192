"""Directory names that are functions of what a sweep runs, so re-running the same command finds its own jobs.

- the sweep directory of `cmvl train -m ...` / `hparams_search=...`: `multirun/<overrides>-<hash>` from the
  command's overrides (unless the user sets `hydra.sweep.dir`);
- each job's directory inside it: its own overrides (`hydra.job.override_dirname`, e.g.
  `fusion=concat,seed=1`) less those every job of the command shares, made safe as one path component
  (`${cmvl_dirname:}` in cmvl/conf/train.yaml, `cmvl.config.resolvers.safe_dirname`). A job
  number would not do: an Optuna re-run or a grid with one more value numbers the same configuration
  differently.
"""

from __future__ import annotations

import hashlib
import re

from cmvl.config.overrides import user_overrides

SWEEP_ROOT = "multirun"
JOB_NAME_EXCLUDED = ("resume", "hparams_search")  # overrides that never name a job (cmvl/conf/train.yaml has them too)


def sweep_dir_for(overrides: list[str]) -> str:
    """The sweep directory of a command line: the same overrides (in any order) give the same directory,
    `multirun/<overrides as letters, digits and _>-<hash of the overrides>`."""
    user = " ".join(sorted(user_overrides(overrides)))
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", user).strip("._")[:60] or "defaults"
    return f"{SWEEP_ROOT}/{slug}-{hashlib.sha1(user.encode()).hexdigest()[:8]}"

"""The OmegaConf resolvers cmvl/conf/train.yaml uses, and the one path-component rule they apply.

Composing a config needs them registered (`cmvl.config.compose`, the Hydra main of `cmvl train`), so they live in
the config package; the sweep code names its job directories with the same `safe_dirname`."""

from __future__ import annotations

import hashlib
import re
import secrets

from omegaconf import OmegaConf

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


def register_resolvers() -> None:
    """`${cmvl_dirname:...}`: used by cmvl/conf/train.yaml's `hydra.sweep.subdir`; `${cmvl_run_suffix:}`: by its
    `hydra.run.dir` (cached like `${now:}`, so one config resolves it to one value)."""
    if not OmegaConf.has_resolver("cmvl_dirname"):
        OmegaConf.register_new_resolver("cmvl_dirname", lambda text: safe_dirname(str(text)))
    if not OmegaConf.has_resolver("cmvl_run_suffix"):
        OmegaConf.register_new_resolver("cmvl_run_suffix", lambda: secrets.token_hex(3), use_cache=True)

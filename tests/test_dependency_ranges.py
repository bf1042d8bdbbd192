"""pyproject.toml's dependency ranges: each has an upper bound, and each admits the version installed here (the one
the suite runs on), so a range can neither be left open nor exclude what was tested."""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _requirements() -> dict[str, list[Requirement]]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: [Requirement(line) for line in lines] for group, lines in groups.items()}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _has_upper_bound(req: Requirement) -> bool:
    return any(spec.operator in ("<", "<=", "==", "~=", "===") for spec in req.specifier)


def test_every_dependency_has_an_upper_bound():
    open_ended = [
        f"{group}: {req}" for group, reqs in _requirements().items() for req in reqs if not _has_upper_bound(req)
    ]
    assert not open_ended, f"dependencies without an upper bound in pyproject.toml: {open_ended}"


def test_the_ranges_admit_the_installed_versions():
    outside, absent = [], []
    for group, reqs in _requirements().items():
        for req in reqs:
            installed = _installed(req.name)
            if installed is None:
                if group == "dependencies":  # an extra may be left out of an install; a dependency may not
                    absent.append(req.name)
            elif not req.specifier.contains(Version(installed), prereleases=True):
                outside.append(f"{req.name} {installed} not in {req.specifier}")
    assert not outside and not absent, f"installed outside pyproject.toml's ranges: {outside}; missing: {absent}"


def test_lightnings_range_is_the_one_its_private_api_was_checked_on():
    from cmvl.training.lightning_compat import SUPPORTED

    (lightning,) = [req for req in _requirements()["dependencies"] if req.name == "pytorch-lightning"]
    assert lightning.specifier == SUPPORTED


@pytest.mark.parametrize(
    ("line", "bounded"), [("numpy>=1.26", False), ("numpy>=1.26,<3", True), ("timm~=1.0", True), ("x==1", True)]
)
def test_the_upper_bound_rule(line, bounded):
    assert _has_upper_bound(Requirement(line)) is bounded

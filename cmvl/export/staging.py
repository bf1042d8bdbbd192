"""A results folder that appears complete or not at all: files are written into a hidden sibling folder, which is
renamed to the final name only when everything in it is written (`cmvl export`, `cmvl compress`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmvl.atomic_file import apply_umask, temp_prefix
from cmvl.errors import UserError


def check_new_folder(out: Path, command: str) -> None:
    """`out` may be written: it does not exist yet or is an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{command}: out={out} already exists and is not an empty folder; choose a new folder")


@contextmanager
def staged_folder(out: Path, command: str) -> Iterator[Path]:
    """A temporary folder beside `out`, renamed to `out` on a clean exit and removed on an error."""
    check_new_folder(out, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".tmp", dir=out.parent))
    try:
        yield staging
        apply_umask(staging, directory=True)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

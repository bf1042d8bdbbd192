"""Can a folder be written? Checked before any work starts (run dir, `out=`, `--out`, the cache), leaving nothing.

Permission bits are not enough: root ignores them, and read-only or virtual file systems (/proc, a read-only
mount) and a full disk refuse writes anyway. So the nearest existing folder is probed by really writing a small
file there and removing it; folders that do not exist yet are not created.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cmvl.errors import UserError


def check_writable_dir(path: str | Path, what: str) -> None:
    """Raise `UserError` unless `path` is a folder cmvl can write into, or one it can create. `what` names the
    setting in the message (e.g. "hydra.run.dir", "cmvl eval out=")."""
    path = Path(path).expanduser()
    absolute = path if path.is_absolute() else Path.cwd() / path
    existing = absolute
    while not existing.exists():  # the nearest ancestor that exists: it is what has to accept a new folder
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == absolute else f"cannot be created: {existing} is a file, not a folder"
        raise UserError(f"{what}{path}: {where}; choose a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cmvl-write-check-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        reason = err.strerror or type(err).__name__
        inside = "" if existing == absolute else f" ({existing} does not accept new files)"
        raise UserError(f"{what}{path}: not writable{inside}: {reason}; choose a folder you can write to") from None

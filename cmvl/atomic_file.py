"""Files that are either complete under their final name or not there: every write cmvl makes goes through here."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# A temporary name says who writes it: `.<target>.<pid>@<host>.<random>.tmp`. A later start of the same operation
# removes the leftovers of writers that died (a killed save, a killed generation) and never those of a live one.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[^.]+\.tmp$")
TEMP_SUFFIX = ".tmp"


def temp_prefix(target: str) -> str:
    """The start of a temporary name for `target` (mkstemp/mkdtemp add a random part and TEMP_SUFFIX)."""
    return f".{target}.{os.getpid()}@{_HOST}."


def _owner_alive(pid: int, host: str) -> bool:
    if host != _HOST:  # another machine's writer on a shared file system: it cannot be asked, so it is kept
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _umask() -> int:
    """The process's umask, read without changing it (Linux /proc), else by setting it and back at once."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Give a file (0666) or folder (0777) made by mkstemp/mkdtemp (0600/0700: private to its writer) the mode a
    plain `open`/`mkdir` would have given it, so a lab mate reads the checkpoints and worlds a umask lets them."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def remove_stale_temps(folder: str | os.PathLike, *, target: str | None = None, recursive: bool = False) -> list[Path]:
    """Remove the temporary files and folders in `folder` (and below it, if `recursive`) whose writer is no longer
    alive; only those of `target` when given. Returns what was removed."""
    removed = []
    for parent, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            match = _TEMP_NAME.match(name)
            if not match or (target is not None and match["target"] != target):
                continue
            if _owner_alive(int(match["pid"]), match["host"]):
                continue
            path = Path(parent) / name
            if name in dirs:
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
            else:
                path.unlink(missing_ok=True)  # a concurrent cleaner may have been first
            removed.append(path)
        if not recursive:
            break
    return removed


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False, **open_args) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit (optionally fsynced) it is renamed over `path`, on an
    error it is removed, so a crash mid-write never leaves a partial file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 → what open() would have made
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=1)

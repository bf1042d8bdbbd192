"""Reading a text file a user named on the command line (`input=requests.jsonl`, `texts=captions.txt`): a missing
file, a folder or a file that is not UTF-8 text is one line naming the key, the same way for every command."""

from __future__ import annotations

from pathlib import Path

from cmvl.errors import UserError


def read_user_text(path: Path, key: str, *, folder_hint: str, error: type[UserError] = UserError) -> str:
    """The UTF-8 text of `path` (given as `key=`); `folder_hint` says what to give instead of a folder."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{key}={path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{key}={path}: is a folder; {folder_hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{key}={path}: not a readable UTF-8 text file ({str(err).splitlines()[0]})") from None

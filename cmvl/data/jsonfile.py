"""Loading of official annotation JSON files with errors that name the file and the missing key."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cmvl.errors import DataError


def load_json(path: str | Path, *, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{what} is not valid JSON: {path} ({err})") from None


def require_keys(record: Mapping[str, Any], keys: Iterable[str], *, path: str | Path, where: str) -> None:
    for key in keys:
        if key not in record:
            raise DataError(f"{path}: missing key '{key}' in {where}")

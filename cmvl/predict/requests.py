"""Prediction requests: one image and, for a task that reads text, its question or phrase; for detection, the
queries to look for (`{"image": "a.jpg", "queries": ["red circle", "square"]}`, or one `"query"`). They come from
keys of the command line, a JSON-lines file (one object per line: `{"image": "a.jpg", "question": "..."}`) or a
folder of images; each keeps where it came from (`origin`), so a bad one is named by its line.

    requests = read_jsonl(Path("requests.jsonl"))        # image paths relative to the file's folder
    requests = folder_requests(Path("photos/"), text_field="question", text="What is left of the circle?")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmvl.errors import DataError, UserError
from cmvl.predict.images import ImageInput
from cmvl.text_files import read_user_text

# The request fields that carry a sample's text (each task reads at most one: `Task.predict_input`); any other
# field of a JSON line (an id of the user's) is copied into its record unchanged.
TEXT_FIELDS = ("question", "phrase", "prompt")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Request:
    """One sample to predict: `image` (a file or a PIL image), `texts` (the text fields it gives: question, phrase),
    `origin` (how a message names it: "requests.jsonl line 3"), `fields` (what its output record repeats) and
    `queries` (detection: the texts to find; empty: the checkpoint's own). A generator's request has no image."""

    image: ImageInput | None
    texts: dict[str, str] = field(default_factory=dict)
    origin: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    queries: tuple[str, ...] = ()


class RequestError(UserError):
    """One request cannot be predicted; the message says why (`on_error=skip` writes it into the request's record)."""


def read_jsonl(path: Path) -> list[Request | RequestError]:
    """The requests of a JSON-lines file, one per non-blank line (an image path is relative to the file's folder).
    A line that is no JSON object, or has no `image` string or a text that is not a string, is in the list as the
    `RequestError` naming its line number (the caller stops there, or records it and goes on)."""
    hint = f"for a folder of images use images={path}"
    lines = read_user_text(path, "input", folder_hint=hint, error=DataError).splitlines()
    requests: list[Request | RequestError] = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                requests.append(jsonl_request(line, origin=f"{path.name} line {number}", folder=path.parent))
            except RequestError as err:
                requests.append(err)
    if not requests:
        raise DataError(f"input={path}: holds no request (one JSON object per line)")
    return requests


def jsonl_request(line: str, *, origin: str, folder: Path) -> Request:
    """The request of one JSON line, or a `RequestError` starting with `origin`."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise RequestError(f"{origin}: not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise RequestError(f'{origin}: a request is a JSON object like {{"image": "a.jpg"}}, not {line.strip():.40}')
    image = record.get("image")
    if (not isinstance(image, str) or not image.strip()) and not ("prompt" in record and image is None):
        raise RequestError(f'{origin}: needs "image": a path to an image file (or only a generator\'s "prompt")')
    texts = {}
    for name in TEXT_FIELDS:
        if name in record:
            if not isinstance(record[name], str):
                raise RequestError(f'{origin}: "{name}" must be a string, not {type(record[name]).__name__}')
            texts[name] = record[name]
    queries = record.get("queries", [record["query"]] if "query" in record else [])
    if "query" in record and "queries" in record:
        raise RequestError(f'{origin}: give "query" or "queries", not both')
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise RequestError(f'{origin}: "queries" must be a list of strings, "query" a string')
    path = None if image is None else Path(image).expanduser()
    return Request(
        image=path if path is None or path.is_absolute() else folder / path,
        texts=texts,
        origin=origin,
        fields=record,
        queries=tuple(queries),
    )


def folder_requests(folder: Path, *, texts: dict[str, str], queries: tuple[str, ...] = ()) -> list[Request]:
    """One request per image file under `folder` (recursively, by file suffix, in path order), each with `texts`
    and `queries`; `DataError` when the folder is missing or holds no image."""
    if not folder.is_dir():
        raise DataError(f"images={folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"images={folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [Request(p, dict(texts), str(p), {"image": str(p.relative_to(folder)), **texts}, queries) for p in files]


def image_identity(image: ImageInput) -> object:
    """What makes two requests' images the same one (decoded and encoded once): the file's absolute path (no file
    system calls: two links to one file are two images, decoded twice), or the object."""
    return ("file", os.path.abspath(image)) if isinstance(image, str | Path) else ("object", id(image))

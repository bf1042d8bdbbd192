"""A request body → the checked request a backend answers: JSON (`{"image": "<base64>", "question": "..."}`; a
`data:image/...;base64,` prefix is accepted) or a multipart form (an `image` file and text fields). The image's size
is read from its header and refused above `max_pixels` before anything is decoded; it is then decoded exactly as
training data is (`cmvl.data.decoding`). Every other field is repeated in the answer's record, as `cmvl predict`
repeats a JSON line's fields, except the image itself."""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from cmvl.data.decoding import DECODE_ERRORS, decode_image
from cmvl.errors import DataError
from cmvl.serve.limits import Limits, Refused, check_text

# The request fields that carry a text, as `cmvl predict`'s (cmvl/inference/requests.py, which needs torch: not
# imported by the torch-free ONNX path; tests/serve check the two agree).
TEXT_FIELDS = ("question", "phrase", "prompt")
UPLOADED = "the uploaded image"  # how an error names the request's image
_DECODING = threading.Lock()  # `decode_image` turns a warning into an error with a process-wide filter


@dataclass
class ServeRequest:
    """One image (decoded, 8-bit RGB), its texts and the other fields its record repeats."""

    image: Image.Image
    texts: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


def json_request(body: bytes, limits: Limits) -> ServeRequest:
    try:
        record = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Refused(422, f"the body is not JSON ({getattr(err, 'msg', err)})") from None
    if not isinstance(record, dict):
        raise Refused(422, 'the body is a JSON object like {"image": "<base64>", "question": "..."}')
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise Refused(422, 'needs "image": the image file\'s bytes in base64')
    if image.startswith("data:") and ";base64," in image[:100]:
        image = image.split(";base64,", 1)[1]
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(422, '"image" is not valid base64') from None
    return _request(data, record, limits)


def form_request(form: Any, limits: Limits) -> ServeRequest:
    """A multipart form (Starlette's `FormData`, its file parts already read: name → bytes or str)."""
    image = form.get("image")
    if not isinstance(image, bytes):
        raise Refused(422, "needs an image file part named image")
    return _request(image, {k: v for k, v in form.items() if k != "image"}, limits)


def _request(data: bytes, record: dict[str, Any], limits: Limits) -> ServeRequest:
    texts = {name: check_text(name, record[name], limits) for name in TEXT_FIELDS if name in record}
    fields = {k: v for k, v in record.items() if k != "image"}
    return ServeRequest(decode_upload(data, limits), texts, fields)


def decode_upload(data: bytes, limits: Limits) -> Image.Image:
    """The RGB image of an uploaded file's bytes; `Refused(422)` for an empty, undecodable or too large one."""
    if not data:
        raise Refused(422, "the image is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except UnidentifiedImageError:
        raise Refused(422, f"unreadable image: {UPLOADED} (not an image format Pillow can identify)") from None
    except DECODE_ERRORS as err:
        raise Refused(422, f"unreadable image: {UPLOADED} ({_reason(err)})") from None
    if width * height > limits.max_pixels:
        raise Refused(
            422,
            f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}",
            limit="max_pixels",
        )
    try:
        with _DECODING:
            return decode_image(io.BytesIO(data), name=UPLOADED)
    except DataError as err:
        raise Refused(422, str(err)) from None


def _reason(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__

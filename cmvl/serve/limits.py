"""What one request may be, and the errors a request earns: each refusal carries its HTTP status and, where a limit
was passed, the limit's name (the JSON error names it: `{"error": ..., "limit": "max_pixels"}`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse


@dataclass(frozen=True)
class Limits:
    """The bounds on what a request may hold and how many may wait (each a key of `cmvl serve`)."""

    max_body_bytes: int = 8 << 20  # a request body (JSON with a base64 image, or a multipart upload): 413 above it
    max_pixels: int = 4096 * 4096  # an image's width × height, read from its header before decoding: 422 above it
    max_text_chars: int = 1000  # a question or phrase: 422 above it
    max_queue: int = 256  # requests waiting for a batch: 503 when full (memory stays bounded)
    max_explains: int = 2  # POST /explain requests running or waiting for the model: 503 beyond (serve/explaining.py)
    explain_timeout_s: float = 60.0  # how long a POST /explain client waits: 504 after it

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_text_chars", "max_queue", "max_explains"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.explain_timeout_s > 0:
            raise ValueError("explain_timeout_s must be > 0")


class Refused(Exception):
    """A request the service does not answer: `status` (401, 404, 413, 422, 503, 504), the one-line reason and, where
    a limit of `Limits` was passed, its name."""

    def __init__(self, status: int, message: str, *, limit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.limit = limit

    def body(self) -> dict[str, Any]:
        return {"error": str(self), **({"limit": self.limit} if self.limit else {})}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.status == 503:
            headers["Retry-After"] = "1"
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def check_text(name: str, value: Any, limits: Limits) -> str:
    """A request's question / phrase: a string of at most `max_text_chars` characters."""
    if not isinstance(value, str):
        raise Refused(422, f'"{name}" must be a string, not {type(value).__name__}')
    if len(value) > limits.max_text_chars:
        raise Refused(
            422, f"{name} has {len(value)} characters; the limit is {limits.max_text_chars}", limit="max_text_chars"
        )
    return value

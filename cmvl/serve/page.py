"""The web page of `cmvl serve` at `/`: upload an image, type the task's text (a question, a phrase, or nothing), see
the answer record (`POST /predict`: the top answers with their probabilities, a caption, tags or a box) and, with
the torch backend, the attention overlay of `cmvl explain` (`POST /explain`).

The page is one static file (`static/index.html`: plain HTML and JavaScript, nothing fetched from elsewhere). It
is served without the bearer token (`OPEN_ROUTES` of cmvl/serve/app.py), since a browser cannot send one when it
opens a page, and so holds nothing of the model: it learns the task and its text field from `GET /info`, sending
the token typed into it with that and every other request. Only whether `POST /explain` draws overlays is written
into it.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from fastapi.responses import HTMLResponse

PLACEHOLDER = "{{ page_config }}"


def page_html(*, overlay: bool) -> str:
    """The page (package data, so an installed wheel has it), told whether `POST /explain` draws overlays."""
    template = resources.files("cmvl.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    return template.replace(PLACEHOLDER, json.dumps({"overlay": bool(overlay)}), 1)


def add_page(app: Any, *, task: str, overlay: bool) -> None:
    """Route `GET /` of `app` (a FastAPI app) to the page; `overlay`: whether `POST /explain` draws overlays. `task`,
    the served task's name, is not written into the page: it reads it from `/info`, which the token guards."""
    del task
    html = page_html(overlay=overlay)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

"""POST /explain cannot hold the service: explanations run in their own `max_explains` threads, one more is 503 at
once, a client waits at most `explain_timeout_s` (504), a timed-out explanation keeps its slot until it finishes,
and /predict and /health answer all the while. A stand-in model whose explanation waits for the test (no torch)."""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
from PIL import Image

from cmvl.serve.app import ServeSettings, create_app
from cmvl.serve.limits import Limits
from cmvl.serve.model import ModelCard
from tests.conftest import assert_one_line_error, cli_in_process
from tests.serve.serving import json_body, post, running


class SlowExplainer:
    """Opened and loaded at once; `answer` is immediate, `explain` waits until `release` is set."""

    card = ModelCard("torch", "vqa", "question", explains=True)

    def __init__(self) -> None:
        self.release, self.explaining = threading.Event(), threading.Event()

    def load(self) -> SlowExplainer:
        return self

    def info(self) -> dict:
        return {"backend": "torch", "task": "vqa"}

    def answer(self, requests) -> list[dict]:
        return [{"task": "vqa", "answer": "red", "answers": [{"label": "red", "score": 1.0}]} for _ in requests]

    def explain(self, request, method: str) -> dict:
        self.explaining.set()
        self.release.wait(30)
        return {"task": "vqa", "method": method}


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="PNG")
    return out.getvalue()


def test_a_slow_explanation_is_504_a_second_one_503_and_predict_still_answers():
    model = SlowExplainer()
    app = create_app(model, ServeSettings(limits=Limits(max_explains=1, explain_timeout_s=0.5)))
    body = json_body(_png(), "What color is it?")
    with running(app) as url:
        slots = app.state.service.explains
        started = time.monotonic()
        timed_out = post(url, "/explain", body)
        assert timed_out.status_code == 504 and timed_out.json()["limit"] == "explain_timeout_s", timed_out.text
        assert time.monotonic() - started < 20 and model.explaining.is_set()
        assert slots.held() == 1  # still running in its thread: its slot is not given back yet
        full = post(url, "/explain", body)
        assert full.status_code == 503 and full.json()["limit"] == "max_explains", full.text
        assert "the limit is 1" in full.json()["error"] and full.headers["Retry-After"] == "1"
        assert post(url, "/predict", body).json()["answer"] == "red"  # the service is not held
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/info").json()["limits"]["max_explains"] == 1
        model.release.set()
        deadline = time.monotonic() + 20
        while slots.held() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slots.held() == 0
        answered = post(url, "/explain", {**body, "method": "attention"})
        assert answered.status_code == 200 and answered.json() == {"task": "vqa", "method": "attention"}


@pytest.mark.parametrize("args", [["max_explains=0"], ["explain_timeout_s=0"]])
def test_bad_explain_limits_are_one_line(args, tmp_path):
    result = cli_in_process("serve", f"ckpt={tmp_path / 'none.ckpt'}", *args, cwd=tmp_path)
    assert_one_line_error(result, args[0].split("=")[0])


def test_the_limits_refuse_what_cannot_bound():
    with pytest.raises(ValueError, match="max_explains"):
        Limits(max_explains=0)
    with pytest.raises(ValueError, match="explain_timeout_s"):
        Limits(explain_timeout_s=0)

"""`cmvl serve` with the torch backend, on the session's tiny VQA run: the answers are `cmvl predict`'s (under a load
of 32 concurrent clients with malformed requests mixed in, batched, memory flat), every limit refuses with the
status and the limit's name, the token guards every route but /health, /health says 503 while loading, a full queue
is 503, /explain draws the overlay, and the command refuses bad configuration in one line and finishes the request
in flight on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cmvl.predict.pipeline import PredictSettings, predict_requests
from cmvl.predict.requests import TEXT_FIELDS, Request
from cmvl.serve import requests as serve_requests
from cmvl.serve.app import ServeSettings, create_app
from cmvl.serve.limits import Limits
from cmvl.serve.torch_model import TorchCheckpoint
from tests.conftest import assert_one_line_error, cli_in_process
from tests.serve.serving import Gated, RawClient, json_body, post, running, val_questions

TOKEN = "s3cret-token"
NEAR_TIE = 1e-4  # top-two probability gap under which two batchings may rank the two answers either way (predict's)
LIMITS = Limits(max_body_bytes=256 << 10, max_pixels=200 * 200, max_text_chars=200, max_queue=256)


@pytest.fixture(scope="module")
def best(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def service(best):
    """The app (token, lowered limits, predict's default top_k) under uvicorn: (base URL, app)."""
    app = create_app(TorchCheckpoint.open(best), ServeSettings(limits=LIMITS, token=TOKEN))
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def questions(tiny_world):
    return val_questions(tiny_world)


@pytest.fixture(scope="module")
def predicted(service, questions):
    """What `cmvl predict` answers for each validation question, from the image files (one at a time: a request
    alone in its batch gets these exact records)."""
    run = service[1].state.service.model.run
    requests = [Request(image, {"question": q}) for image, q in questions]
    return [r.to_json() for r in predict_requests(run, requests, PredictSettings(batch_size=1))]


def _same_answer(record: dict, expected: dict) -> bool:
    """The same top answer, or a near-tie of predict's top two (as tests/inference/test_predict.py allows)."""
    scores = [a["score"] for a in expected["answers"]]
    return record["answer"] == expected["answer"] or scores[0] - scores[1] < NEAR_TIE


def test_the_text_fields_are_predicts():
    assert serve_requests.TEXT_FIELDS == TEXT_FIELDS


def test_json_and_multipart_answers_are_predicts_record(service, questions, predicted):
    url, _ = service
    image, question = questions[0]
    record = post(url, "/predict", json_body(image, question, id="q-1"), TOKEN).json()
    assert record == {"id": "q-1", "question": question, **predicted[0]}
    uploaded = httpx.post(
        url + "/predict",
        files={"image": ("a.jpg", image.read_bytes(), "image/jpeg")},
        data={"question": question},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert uploaded.status_code == 200 and uploaded.json() == {"question": question, **predicted[0]}
    data_url = {**json_body(image, question), "image": "data:image/jpeg;base64," + json_body(image)["image"]}
    assert post(url, "/predict", data_url, TOKEN).json()["answers"] == predicted[0]["answers"]


def test_every_limit_and_malformed_body_is_refused_with_its_status(service, questions):
    url, _ = service
    image, question = questions[0]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def refused(response: httpx.Response, status: int, limit: str | None = None) -> str:
        assert response.status_code == status, response.text
        body = response.json()
        assert body.get("limit") == limit and body["error"]
        return body["error"]

    big = io.BytesIO()
    Image.new("RGB", (300, 200), "red").save(big, format="PNG")  # 60,000 pixels > 40,000; a 1 kB file
    assert "60000 pixels" in refused(post(url, "/predict", json_body(big.getvalue(), question), TOKEN), 422,
                                     "max_pixels")  # fmt: skip
    long = post(url, "/predict", json_body(image, "what " * 50), TOKEN)
    assert "250 characters" in refused(long, 422, "max_text_chars")
    huge = {"image": "A" * (300 << 10), "question": question}
    refused(post(url, "/predict", huge, TOKEN), 413, "max_body_bytes")

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(300):
            yield b"A" * 1024

    streamed = httpx.post(url + "/predict", content=chunks(), headers={**auth, "Content-Type": "application/json"})
    refused(streamed, 413, "max_body_bytes")
    assert "unreadable image" in refused(post(url, "/predict", json_body(b"GIF89a not really", question), TOKEN), 422)
    assert "base64" in refused(post(url, "/predict", {"image": "%%%", "question": question}, TOKEN), 422)
    assert "not JSON" in refused(httpx.post(url + "/predict", content=b"{", headers={
        **auth, "Content-Type": "application/json"}), 422)  # fmt: skip
    assert "needs question" in refused(post(url, "/predict", json_body(image), TOKEN), 422)
    assert "takes no phrase" in refused(post(url, "/predict", json_body(image, phrase="the circle"), TOKEN), 422)
    assert "vocabulary" in refused(post(url, "/predict", json_body(image, "qqxzv"), TOKEN), 422)
    assert "must be a string" in refused(post(url, "/predict", json_body(image, question=None) | {"question": 3},
                                              TOKEN), 422)  # fmt: skip
    refused(httpx.post(url + "/predict", content=b"x", headers={**auth, "Content-Type": "text/plain"}), 415)
    no_file = httpx.post(url + "/predict", data={"question": question}, files={"other": ("x", b"1")}, headers=auth)
    assert "image file part" in refused(no_file, 422)
    assert httpx.get(url + "/health").status_code == 200  # and the service is still up


def test_the_token_guards_every_route_but_health(service, questions):
    url, _ = service
    image, question = questions[0]
    for method, route in (("POST", "/predict"), ("POST", "/explain"), ("GET", "/info"), ("GET", "/metrics"),
                          ("GET", "/nowhere")):  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = httpx.request(method, url + route, json=json_body(image, question), headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", route
    assert httpx.get(url + "/health").json() == {"status": "ok", "task": "vqa", "backend": "torch"}


def test_info_and_metrics(service, best):
    url, app = service
    auth = {"Authorization": f"Bearer {TOKEN}"}
    info = httpx.get(url + "/info", headers=auth).json()
    run = app.state.service.model.run
    assert info["task"] == "vqa" and info["answers"] == len(run.task.answers) and info["backend"] == "torch"
    assert info["input"] == {"image_size": [32, 32], "text_field": "question", "text_max_length": 32}
    assert info["checkpoint"]["sha256"] == run.checkpoint.sha256 and len(info["checkpoint"]["sha256"]) == 64
    assert info["model"]["fusion"] == "CrossAttentionFusion" and info["limits"]["max_pixels"] == 40000
    metrics = httpx.get(url + "/metrics", headers=auth)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'cmvl_serve_requests_total{route="/info",status="200"}' in metrics.text
    assert 'cmvl_serve_request_seconds_bucket{le="0.001",route="/info"}' in metrics.text


def _malformed(k: int, image: Path, question: str) -> tuple[bytes, int]:
    """The k-th kind of malformed request body and the status it earns."""
    kinds = [
        ({"image": "%%%", "question": question}, 422),
        (json_body(b"\x89PNG\r\n\x1a\n broken", question), 422),
        (json_body(image), 422),
        (json_body(image, "x" * 201), 422),
        (b"{not json", 422),
        ({"image": "A" * (300 << 10)}, 413),
    ]
    body, status = kinds[k % len(kinds)]
    return body if isinstance(body, bytes) else json.dumps(body).encode(), status


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _histogram(text: str, name: str) -> tuple[float, float]:
    total = float(re.search(rf"^{name}_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(rf"^{name}_count (\S+)$", text, re.M).group(1))
    return total, count


def test_2000_requests_from_32_clients_with_10_percent_malformed(service, questions, predicted):
    """No 5xx for a valid request, each valid answer predict's, memory after the run within 10% of after the first
    200 requests, and the requests batched (mean batch size > 1)."""
    url, _ = service
    total, clients = 2016, 32
    bodies = [json.dumps(json_body(image, question)).encode() for image, question in questions]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    headers = {**auth, "Content-Type": "application/json"}
    outcomes: list[tuple[int, int, int, dict]] = []  # (request, expected status, status, body)
    rss: dict[str, int] = {}
    before = _histogram(httpx.get(url + "/metrics", headers=auth).text, "cmvl_serve_batch_size")

    async def client(c: int) -> None:
        http = RawClient(url)
        for k in range(c, total, clients):
            if k % 10 == 9:
                body, expected = _malformed(k // 10, *questions[k % len(questions)])
            else:
                body, expected = bodies[k % len(bodies)], 200
            status, payload = await http.post("/predict", body, headers)
            outcomes.append((k, expected, status, json.loads(payload)))
            if len(outcomes) >= 200 and "first" not in rss:
                rss["first"] = _rss_bytes()
        await http.close()

    async def load() -> None:
        await asyncio.gather(*(client(c) for c in range(clients)))

    asyncio.run(load())
    rss["last"] = _rss_bytes()
    assert len(outcomes) == total
    wrong_status = [(k, e, s, b) for k, e, s, b in outcomes if s != e]
    assert wrong_status == [], wrong_status[:5]
    answers = [(k, b) for k, e, s, b in outcomes if e == 200]
    differ = [(k, b["answer"]) for k, b in answers if not _same_answer(b, predicted[k % len(predicted)])]
    assert len(answers) > 1800 and differ == []
    assert abs(rss["last"] - rss["first"]) <= 0.10 * rss["first"], rss
    after = _histogram(httpx.get(url + "/metrics", headers=auth).text, "cmvl_serve_batch_size")
    batched, batches = after[0] - before[0], after[1] - before[1]
    assert batched >= len(answers) and batched / batches > 1, (batched, batches)  # refused texts are in batches


def test_health_is_503_until_the_model_is_loaded_and_says_why_it_failed(best, questions):
    gated = Gated(TorchCheckpoint.open(best))
    gated.answering.set()
    app = create_app(gated)
    with running(app, wait_loaded=False) as url:
        assert httpx.get(url + "/health").status_code == 503
        assert httpx.get(url + "/health").json() == {"status": "loading"}
        assert post(url, "/predict", json_body(*questions[0])).status_code == 503
        gated.release.set()
        assert app.state.service.loaded.wait(30)
        assert httpx.get(url + "/health").status_code == 200
        assert post(url, "/predict", json_body(*questions[0])).status_code == 200
    lines: list[str] = []
    failing = Gated(TorchCheckpoint.open(best), error=RuntimeError("disk gone"))
    failing.release.set()
    app = create_app(failing, on_load_error=lines.append)
    with running(app, wait_loaded=False) as url:
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            time.sleep(0.02)
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "failed" and "disk gone" in lines[0]
        assert "failed to load" in post(url, "/predict", json_body(*questions[0])).json()["error"]


def test_a_full_queue_is_503_and_the_waiting_requests_are_answered(best, questions):
    gated = Gated(TorchCheckpoint.open(best))
    gated.release.set()
    settings = ServeSettings(limits=Limits(max_queue=2), max_batch_size=1, max_wait_ms=0)
    app = create_app(gated, settings)
    statuses: list[int] = []
    with running(app) as url:

        def ask() -> None:
            statuses.append(post(url, "/predict", json_body(*questions[0])).status_code)

        threads = [threading.Thread(target=ask) for _ in range(3)]  # one answering, two waiting: the queue is full
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while app.state.service.queue.depth() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        full = post(url, "/predict", json_body(*questions[0]))
        assert full.status_code == 503 and full.json()["limit"] == "max_queue" and full.headers["retry-after"]
        gated.answering.set()
        for thread in threads:
            thread.join(30)
    assert statuses == [200, 200, 200]


def test_explain_draws_the_overlay_of_cmvl_explain(service, questions):
    from cmvl.inference.explain import explain

    url, app = service
    image, question = questions[0]
    drawn = post(url, "/explain", json_body(image, question), TOKEN)
    assert drawn.status_code == 200, drawn.text
    body = drawn.json()
    expected = explain(app.state.service.model.run, image=image, text=question)
    assert body["title"] == expected.title and body["words"] == expected.words and body["method"] == "gradcam"
    picture = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert picture.format == "PNG" and picture.width > 200
    assert post(url, "/explain", json_body(image, question, method="nope"), TOKEN).status_code == 422


@pytest.mark.parametrize(
    "args, needles",
    [
        (["ckpt=/nonexistent/best.ckpt"], ["checkpoint not found"]),
        (["ckpt=x.ckpt", "port=70000"], ["port=70000", "[0, 65535]"]),
        (["ckpt=x.ckpt", "port=http"], ["port=http"]),
        (["backend=onnx"], ["backend=onnx serves export=DIR"]),
        (["ckpt=x.ckpt", "export=dir"], ["backend=torch serves ckpt=PATH"]),
        (["ckpt=x.ckpt", "host=no.such.host.invalid"], ["host=no.such.host.invalid"]),
        (["ckpt=x.ckpt", "token= "], ["token= is empty"]),
        (["backend=onnx", "export=/nonexistent"], ["export=/nonexistent: no such folder"]),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(args, needles, tmp_path):
    port = [] if any(a.startswith("port=") for a in args) else ["port=0"]
    assert_one_line_error(cli_in_process("serve", *port, *args, cwd=tmp_path), *needles)


def test_a_port_in_use_is_one_line(best, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli_in_process("serve", f"ckpt={best}", f"port={port}", cwd=tmp_path)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_the_command_binds_localhost_reads_the_token_variable_and_finishes_in_flight_requests_on_sigterm(
    best, questions, predicted, tmp_path
):
    env = {**os.environ, "CMVL_SERVE_TOKEN": TOKEN, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cmvl", "serve", f"ckpt={best}", "port=0", "max_wait_ms=1500", "max_batch_size=8"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        url = re.search(r"on (http://127\.0\.0\.1:\d+) \(bearer token required\)", line).group(1)
        deadline = time.monotonic() + 120
        while httpx.get(url + "/health").status_code != 200:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        assert httpx.get(url + "/info").status_code == 401
        answer: list[httpx.Response] = []
        asking = threading.Thread(target=lambda: answer.append(post(url, "/predict", json_body(*questions[0]),
                                                                     TOKEN)))  # fmt: skip
        asking.start()
        time.sleep(0.5)  # the request waits in its batch for 1.5 s: in flight when SIGTERM comes
        process.send_signal(signal.SIGTERM)
        asking.join(30)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert answer[0].status_code == 200 and answer[0].json()["answers"] == predicted[0]["answers"]
    assert "stopped on SIGTERM: the requests in flight were answered" in process.stderr.read()

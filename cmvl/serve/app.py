"""The HTTP service: routes, the guard every request passes (bearer token, body size, metrics) and the model loaded
in the background, so that the server answers `GET /health` (503) while the weights load.

Routes: `POST /predict` (a JSON body with a base64 image, or a multipart upload, plus the task's text field) →
`cmvl predict`'s record; `POST /explain` → the attention / Grad-CAM overlay PNG (torch backend only, 404 otherwise);
`GET /health` (503 until loaded, then 200; the one route without the token); `GET /info`; `GET /metrics`
(Prometheus text). Errors are JSON: `{"error": "...", "limit": "max_pixels"}` (`limit` where one was passed).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from cmvl.errors import UserError, one_line
from cmvl.log import log
from cmvl.serve.batching import BatchQueue, QueueFull
from cmvl.serve.explaining import ExplainSlots
from cmvl.serve.limits import Limits, Refused
from cmvl.serve.metrics import ServeMetrics
from cmvl.serve.model import OpenedModel, ServedModel
from cmvl.serve.requests import ServeRequest, form_request, json_request

ROUTES = {"/", "/predict", "/explain", "/health", "/info", "/metrics"}
OPEN_ROUTES = {"/health", "/"}  # without the token: a load balancer's probe; the static page (cmvl/serve/page.py)


@dataclass(frozen=True)
class ServeSettings:
    limits: Limits = field(default_factory=Limits)
    max_batch_size: int = 32  # requests per forward pass at most
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    token: str | None = None  # the bearer token every route but /health asks for (None: no token)
    explain_method: str = "gradcam"  # POST /explain's default method (a body's "method" chooses another)


class Service:
    """The app's state: the model once loaded (or why it failed), and the queue that batches its requests."""

    def __init__(self, opened: OpenedModel, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.opened, self.settings, self.metrics = opened, settings, metrics
        self.card = opened.card
        self.model: ServedModel | None = None
        self.queue: BatchQueue | None = None
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self.explains = ExplainSlots(settings.limits.max_explains, settings.limits.explain_timeout_s)

    def load(self, on_error: Callable[[str], None]) -> None:
        try:
            model = self.opened.load()
        except Exception as err:  # noqa: BLE001 (a bad checkpoint or a bug: either way the service cannot answer)
            self.load_error = one_line(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            log.error(f"serve: the model did not load: {self.load_error}")
            on_error(self.load_error)
            return
        limits = self.settings.limits
        queue = BatchQueue(
            model.answer,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=limits.max_queue,
            on_batch=self.metrics.batch_size.observe,
        )
        queue.start()
        self.queue = queue
        self.model = model  # the routes answer from here on
        self.loaded.set()

    def ready(self) -> ServedModel:
        if self.model is None:
            raise Refused(503, f"the model failed to load: {self.load_error}" if self.load_error else "loading")
        return self.model

    def stop(self) -> None:
        if self.queue is not None:
            self.queue.stop()
        self.explains.stop()


def create_app(
    opened: OpenedModel,
    settings: ServeSettings = ServeSettings(),
    *,
    on_load_error: Callable[[str], None] = lambda line: None,
) -> FastAPI:
    """The service of `opened` (its card read, its weights loaded in a thread when the app starts);
    `on_load_error(line)` is called if loading fails (the CLI stops the server)."""
    metrics = ServeMetrics(ROUTES)
    service = Service(opened, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=service.load, args=(on_load_error,), name="cmvl-serve-loader", daemon=True).start()
        yield
        await run_in_threadpool(service.stop)  # uvicorn has let the in-flight requests finish by now

    app = FastAPI(title="cmvl serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(Guard, settings=settings, metrics=metrics)

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        return err.response()

    @app.get("/health")
    async def health() -> JSONResponse:
        if service.model is not None:
            return JSONResponse({"status": "ok", "task": service.card.task, "backend": service.card.backend})
        state = {"status": "failed", "error": service.load_error} if service.load_error else {"status": "loading"}
        return JSONResponse(state, status_code=503)

    @app.get("/info")
    async def info() -> JSONResponse:
        model = service.ready()
        limits = asdict(settings.limits)
        batching = {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms}
        return JSONResponse({**model.info(), "limits": limits, "batching": batching, "token": bool(settings.token)})

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.queue_depth.set(service.queue.depth() if service.queue is not None else 0)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        service.ready()
        asked = await read_request(request, settings.limits)
        try:
            record = await service.queue.submit(asked)
        except QueueFull as err:
            raise Refused(503, f"the queue is full ({err}); retry later", limit="max_queue") from None
        if "error" in record:
            raise Refused(422, record["error"])
        return JSONResponse(record)

    @app.post("/explain")
    async def explain(request: Request) -> JSONResponse:
        model = service.ready()
        if not service.card.explains:
            why = "backend=onnx has no maps (they need torch)" if service.card.backend == "onnx" else "no maps"
            raise Refused(404, f"POST /explain: task={service.card.task} with backend={service.card.backend}: {why}")
        asked = await read_request(request, settings.limits)
        method = asked.fields.get("method", settings.explain_method)
        try:
            return JSONResponse(await service.explains.run(model.explain, asked, method))
        except UserError as err:
            raise Refused(422, one_line(err)) from None

    _add_page(app, service)
    return app


async def read_request(request: Request, limits: Limits) -> ServeRequest:
    """The request of a JSON or multipart body (decoded in a worker thread, off the event loop)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        body = await request.body()
        return await run_in_threadpool(json_request, body, limits)
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Refused:
            raise
        except Exception as err:  # noqa: BLE001 (Starlette's multipart errors: a malformed form)
            raise Refused(422, f"malformed multipart form ({getattr(err, 'detail', None) or err})") from None
        values = {k: (await v.read() if isinstance(v, UploadFile) else v) for k, v in form.items()}
        await form.close()
        return await run_in_threadpool(form_request, values, limits)
    raise Refused(415, f"send application/json or multipart/form-data, not {kind or 'no content type'}")


def _add_page(app: FastAPI, service: Service) -> None:
    """The web page at `/` (cmvl/serve/page.py), where that module is installed."""
    try:
        from cmvl.serve import page
    except ModuleNotFoundError as err:
        if err.name != "cmvl.serve.page":
            raise
        return
    page.add_page(app, task=service.card.task, overlay=service.card.explains)


class Guard:
    """ASGI middleware in front of every route: the bearer token (401), the body size (413, from the declared
    length before anything is read, and counted as the body streams in), and each request's status and latency
    counted in the metrics."""

    def __init__(self, app: Any, *, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics
        self.token = settings.token.encode() if settings.token else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _send_refusal(refusal, sending)
            else:
                await self.app(scope, self._counted(receive), sending)
        finally:
            self.metrics.observe(scope["path"], status[0], time.perf_counter() - start)

    def _refusal(self, scope: dict) -> Refused | None:
        headers = dict(scope["headers"])
        if self.token is not None and scope["path"] not in OPEN_ROUTES:
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.token):
                return Refused(401, "this service needs its bearer token (Authorization: Bearer <token>)")
        declared = headers.get(b"content-length")
        limit = self.settings.limits.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return Refused(413, f"the body is {declared.decode(errors='replace')} bytes; the limit is {limit}",
                           limit="max_body_bytes")  # fmt: skip
        return None

    def _counted(self, receive: Callable) -> Callable:
        limit, seen = self.settings.limits.max_body_bytes, [0]

        async def receiving() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise Refused(413, f"the body is over the limit of {limit} bytes", limit="max_body_bytes")
            return message

        return receiving


async def _send_refusal(refusal: Refused, send: Callable) -> None:
    await refusal.response()({"type": "http"}, None, send)

"""`cmvl serve ckpt=PATH [host=127.0.0.1] [port=8000] [key=value ...]`: a trained model behind an HTTP API
(cmvl/serve): predict's answers, dynamically batched, with limits on every input, an optional bearer token and
Prometheus metrics; `backend=onnx export=DIR` serves a `cmvl export format=onnx` folder without torch."""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from cmvl.cli.args import Option, Spec, choice, integer, parse, path, wants_help
from cmvl.errors import ConfigError

TOKEN_VARIABLE = "CMVL_SERVE_TOKEN"
SERVE = Spec(
    "serve",
    """Serves a checkpoint (backend=torch: answers are cmvl predict's, computed by its own pipeline) or an ONNX export
folder (backend=onnx: onnxruntime only, VQA exports) over HTTP: POST /predict, POST /explain (torch), GET /health
(503 until the model is loaded), GET /info, GET /metrics. Concurrent requests are batched (max_batch_size,
max_wait_ms); bodies, image pixels and texts are bounded (413 / 422 naming the limit) and so is the queue (503
when full). With token= (or the CMVL_SERVE_TOKEN environment variable) every route but /health needs the header
"Authorization: Bearer <token>". SIGTERM or Ctrl-C finish the requests in flight, then stop.""",
    (
        Option("ckpt", "the checkpoint to serve (backend=torch)", path, None, "PATH"),
        Option(
            "backend",
            "torch (a checkpoint) or onnx (an export folder, no torch)",
            choice(("torch", "onnx")),
            "torch",
            "torch|onnx",
        ),  # fmt: skip
        Option("export", "backend=onnx: the folder cmvl export format=onnx wrote", path, None, "DIR"),
        Option(
            "host",
            "the address to listen on (0.0.0.0: every interface, reachable from the network)",
            str,
            "127.0.0.1",
            "HOST",
        ),  # fmt: skip
        Option("port", "the TCP port (0: any free one, printed)", integer(0, 65535), 8000, "PORT"),
        Option(
            "token", f"the bearer token clients must send (default: ${TOKEN_VARIABLE}, else none)", str, None, "TEXT"
        ),  # fmt: skip
        Option("task", "which task of a multitask checkpoint answers", str, None, "NAME"),
        Option("top_k", "how many answers / classes a record lists (default: predict's)", integer(1), None, "K"),
        Option("device", "where the model runs: cpu, cuda, cuda:1, mps (backend=torch)", str, "cpu", "DEVICE"),
        Option("precision", "32, or bf16 (backend=torch)", choice(("32", "bf16")), "32", "32|bf16"),
        Option("max_batch_size", "requests answered by one forward pass at most", integer(1), 32, "N"),
        Option("max_wait_ms", "how long a batch's first request waits for more (milliseconds)", integer(0), 5, "MS"),
        Option("max_queue", "requests that may wait for a batch (503 beyond)", integer(1), 256, "N"),
        Option("max_body_bytes", "the largest request body (413 beyond)", integer(1), 8 << 20, "BYTES"),
        Option("max_pixels", "the largest image, width x height (422 beyond)", integer(1), 4096 * 4096, "N"),
        Option("max_text_chars", "the longest question / phrase (422 beyond)", integer(1), 1000, "N"),
        Option("max_explains", "POST /explain requests running at once (503 beyond)", integer(1), 2, "N"),
        Option("explain_timeout_s", "seconds a POST /explain client waits (504 after)", integer(1), 60, "S"),
        Option("graceful_timeout", "seconds SIGTERM waits for the requests in flight", integer(1), 30, "S"),
    ),
    overrides="overrides of the checkpoint's config (evaluation options), as cmvl predict takes them",
    epilog="""Examples:
  cmvl serve ckpt=best.ckpt port=8000
  curl -s localhost:8000/predict -H 'Content-Type: application/json' \\
       -d '{"image": "'"$(base64 -w0 photo.png)"'", "question": "What color is the circle?"}'
  curl -s localhost:8000/predict -F image=@photo.png -F question="What color is the circle?"
  CMVL_SERVE_TOKEN=secret cmvl serve ckpt=best.ckpt host=0.0.0.0 max_batch_size=64
  cmvl serve backend=onnx export=exported/ port=8001""",
)


def serve_command(args: list[str]) -> None:
    if wants_help(args):
        print(SERVE.help())
        return
    parsed = parse(SERVE, args)
    keys = parsed.values
    if keys["backend"] == "torch" and (keys["ckpt"] is None or keys["export"] is not None):
        raise ConfigError("serve: backend=torch serves ckpt=PATH (an export folder is backend=onnx export=DIR)")
    if keys["backend"] == "onnx" and (keys["export"] is None or keys["ckpt"] is not None or parsed.overrides):
        raise ConfigError("serve: backend=onnx serves export=DIR (a cmvl export format=onnx folder), no ckpt=")
    token = keys["token"] if keys["token"] is not None else os.environ.get(TOKEN_VARIABLE) or None
    if token is not None and not token.strip():
        raise ConfigError("serve: token= is empty; give a secret, or leave it out for no token")
    listening = _listening_socket(keys["host"], keys["port"])  # a port in use is one line, before any loading
    try:
        opened = _opened(keys, parsed.overrides)
        _serve(opened, keys, token, listening)
    finally:
        listening.close()


def _opened(keys: dict[str, Any], overrides: list[str]) -> Any:
    if keys["backend"] == "onnx":
        from cmvl.serve.onnx_model import OnnxExport

        return OnnxExport.open(keys["export"], top_k=keys["top_k"])
    from cmvl.serve.torch_model import TorchCheckpoint

    return TorchCheckpoint.open(
        keys["ckpt"], device=keys["device"], task=keys["task"], top_k=keys["top_k"], precision=keys["precision"],
        overrides=overrides,
    )  # fmt: skip


def _listening_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"serve: host={host}: not an address of this machine ({err})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ConfigError(f"serve: cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve(opened: Any, keys: dict[str, Any], token: str | None, listening: socket.socket) -> None:
    import uvicorn

    from cmvl.log import log
    from cmvl.serve.app import ServeSettings, create_app
    from cmvl.serve.limits import Limits

    limits = Limits(
        max_body_bytes=keys["max_body_bytes"], max_pixels=keys["max_pixels"], max_text_chars=keys["max_text_chars"],
        max_queue=keys["max_queue"], max_explains=keys["max_explains"],
        explain_timeout_s=float(keys["explain_timeout_s"]),
    )  # fmt: skip
    settings = ServeSettings(
        limits=limits, max_batch_size=keys["max_batch_size"], max_wait_ms=float(keys["max_wait_ms"]), token=token
    )
    failed: list[str] = []
    server: uvicorn.Server | None = None

    def stop_on_load_error(line: str) -> None:
        failed.append(line)
        if server is not None:
            server.should_exit = True

    app = create_app(opened, settings, on_load_error=stop_on_load_error)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=keys["graceful_timeout"],
        lifespan="on", server_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    host, port = listening.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    guarded = "bearer token required" if token else "no token: anyone who can reach it may use it"
    if keys["host"] not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning(f"serve: host={keys['host']} is reachable from the network and no token= is set")
    print(f"serving task={opened.card.task} ({opened.card.backend}) on http://{shown}:{port} ({guarded})", flush=True)
    # uvicorn catches SIGTERM, lets the requests in flight finish, then raises the signal again for the handler
    # that was there before: this one, so that a graceful stop exits 0 (SIGINT stays an interrupt: exit 130).
    terminated: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    try:
        server.run(sockets=[listening])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise ConfigError(f"serve: the model did not load: {failed[0]}")
    print(f"stopped{' on SIGTERM' if terminated else ''}: the requests in flight were answered", file=sys.stderr,
          flush=True)  # fmt: skip

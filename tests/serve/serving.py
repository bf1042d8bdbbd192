"""Helpers of the serve tests: an app running under a real uvicorn server in a thread of the test process, the tiny
world's validation questions as request bodies, and models that block or fail on purpose."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn


@contextlib.contextmanager
def running(app, *, wait_loaded: bool = True) -> Iterator[str]:
    """`app` served on a free localhost port while inside; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=120)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 60
        while not server.started or (wait_loaded and not app.state.service.loaded.is_set()):
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def val_questions(tiny_world: Path) -> list[tuple[Path, str]]:
    """(image file, question) of every validation question of the tiny world."""
    questions = json.loads((tiny_world / "v2_OpenEnded_mscoco_val_questions.json").read_text())["questions"]
    return [(tiny_world / "val" / f"COCO_val_{q['image_id']:012d}.jpg", q["question"]) for q in questions]


def json_body(image: Path | bytes, question: str | None = None, **fields) -> dict:
    data = image.read_bytes() if isinstance(image, Path) else image
    body = {"image": base64.b64encode(data).decode("ascii"), **fields}
    return body if question is None else {**body, "question": question}


def post(url: str, route: str, body: dict, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(url + route, json=body, headers=headers, timeout=60)


class Gated:
    """An opened model whose `load` waits for `release` (or raises `error`), and whose loaded model's `answer`
    waits for `answering` to be set: a service caught loading, or busy."""

    def __init__(self, opened, *, error: Exception | None = None) -> None:
        self.opened, self.card, self.error = opened, opened.card, error
        self.release, self.answering = threading.Event(), threading.Event()

    def load(self):
        self.release.wait(60)
        if self.error is not None:
            raise self.error
        model = self.opened.load()
        answer = model.answer

        def gated(requests):
            self.answering.wait(60)
            return answer(requests)

        model.answer = gated
        return model


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on one connection (asyncio streams): the load test's 32 clients, whose
    cost would otherwise be mostly httpx's connection-pool bookkeeping in this same process."""

    def __init__(self, url: str) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, route: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        lines = [f"POST {route} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        payload = await self.reader.readexactly(int(fields.get("content-length", 0)))
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.reader = self.writer = None

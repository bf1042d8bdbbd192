"""`cmvl serve` under load, on localhost only: requests/s and p50 / p99 latency at 1, 8 and 32 concurrent clients,
for the service as configured (dynamic batching: `max_batch_size=32 max_wait_ms=5`) and unbatched
(`max_batch_size=1`), measured in the same run, and the throughput ratio of the two at 32 clients. Each service is
`cmvl serve` in its own process on a free 127.0.0.1 port; each client keeps one connection and sends the next
request when the last is answered (a closed loop), `--requests` requests per level. Usage:

    .venv/bin/python scripts/bench_serve.py --ckpt outputs/<date>/<time>-<hex>/checkpoints/best.ckpt --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import re
import statistics
import subprocess
import sys
import time

import httpx
from PIL import Image

LEVELS = (1, 8, 32)
QUESTIONS = ("what color is the circle?", "how many shapes are there?", "is there a square?", "what is left of it?")


def bodies(count: int = 16) -> list[bytes]:
    """JSON request bodies: small PNGs of different colours with questions (what they ask does not change speed)."""
    out = []
    for k in range(count):
        png = io.BytesIO()
        Image.new("RGB", (64, 64), (k * 15 % 256, 255 - k * 15 % 256, k * 40 % 256)).save(png, format="PNG")
        body = {"image": base64.b64encode(png.getvalue()).decode(), "question": QUESTIONS[k % len(QUESTIONS)]}
        out.append(json.dumps(body).encode())
    return out


def start(ckpt: str, *settings: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cmvl", "serve", f"ckpt={ckpt}", "host=127.0.0.1", "port=0", "verbosity=quiet",
         *settings],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = re.search(r"on (http://127\.0\.0\.1:\d+)", process.stdout.readline()).group(1)
    deadline = time.monotonic() + 300
    while httpx.get(url + "/health").status_code != 200:
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("the service did not load")
        time.sleep(0.2)
    return process, url


async def level(url: str, clients: int, total: int, payloads: list[bytes]) -> dict[str, float]:
    latencies: list[float] = []

    async def client(c: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            for k in range(c, total, clients):
                began = time.perf_counter()
                response = await http.post("/predict", content=payloads[k % len(payloads)],
                                           headers={"Content-Type": "application/json"})  # fmt: skip
                latencies.append(time.perf_counter() - began)
                if response.status_code != 200:
                    raise SystemExit(f"request {k}: {response.status_code} {response.text[:200]}")

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100)
    return {"rps": total / wall, "p50_ms": 1000 * cuts[49], "p99_ms": 1000 * cuts[98]}


def mean_batch(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    total = float(re.search(r"^cmvl_serve_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^cmvl_serve_batch_size_count (\S+)$", text, re.M).group(1))
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--requests", type=int, default=400, help="requests per level (after 32 warm-up ones)")
    args = parser.parse_args()
    payloads = bodies()
    results: dict[str, dict[int, dict[str, float]]] = {}
    for name, settings in (("batched", ("max_batch_size=32", "max_wait_ms=5")), ("unbatched", ("max_batch_size=1",))):
        process, url = start(args.ckpt, *settings)
        try:
            asyncio.run(level(url, 8, 32, payloads))  # warm-up
            results[name] = {n: asyncio.run(level(url, n, args.requests, payloads)) for n in LEVELS}
            results[name]["mean_batch"] = mean_batch(url)
        finally:
            process.terminate()
            process.wait(60)
    print(f"{'service':<10} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, rows in results.items():
        for n in LEVELS:
            r = rows[n]
            print(f"{name:<10} {n:>7} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
        print(f"{name:<10} mean batch size over the run: {rows['mean_batch']:.2f}")
    ratio = results["batched"][32]["rps"] / results["unbatched"][32]["rps"]
    print(f"throughput at 32 clients, batched / unbatched: {ratio:.2f}x")


if __name__ == "__main__":
    main()

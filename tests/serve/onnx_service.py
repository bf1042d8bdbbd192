"""Run in a fresh interpreter by tests/serve/test_serve_onnx.py: `cmvl serve backend=onnx`'s app on an export folder,
asked through Starlette's test client; prints what it answered and whether torch was imported.

    python onnx_service.py EXPORT_DIR requests.json    # [[image file, question], ...]
"""

import base64
import json
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

import cmvl.cli.serve_cmd  # noqa: F401 (the command's module too must not import torch)
from cmvl.serve.app import ServeSettings, create_app
from cmvl.serve.onnx_model import OnnxExport


def main(folder: str, requests_file: str) -> None:
    asked = json.loads(Path(requests_file).read_text())
    app = create_app(OnnxExport.open(Path(folder)), ServeSettings(max_wait_ms=20))
    out = {}
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        bodies = [{"image": base64.b64encode(Path(i).read_bytes()).decode(), "question": q} for i, q in asked]
        out["records"] = [client.post("/predict", json=b).json() for b in bodies]
        out["unknown"] = client.post("/predict", json={**bodies[0], "question": "qqxzv"}).json()
        out["phrase"] = client.post("/predict", json={**bodies[0], "phrase": "x"}).status_code
        explained = client.post("/explain", json=bodies[0])
        out["explain"] = [explained.status_code, explained.json()]
        out["info"] = client.get("/info").json()
    out["imported"] = sorted(name for name in ("torch", "torchvision") if name in sys.modules)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])

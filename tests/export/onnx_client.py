"""A client of a `cmvl export format=onnx` folder that uses only onnxruntime, tokenizers, Pillow and NumPy (no torch,
no cmvl): it follows cmvl_export.json to answer VQA questions about image files.

`cmvl serve backend=onnx` (cmvl/serve/onnx_model.py) decodes, pads and resizes from the same manifest with code of
its own on purpose: this file is what a user writes with cmvl absent, so it imports nothing of cmvl and the two are
not folded into one. It resizes with Pillow's bilinear filter, which the manifest names as within one grey level of
training's resize; the service computes training's exact pixels (cmvl/serve/resize.py).

    python onnx_client.py EXPORT_DIR requests.json   # [{"image": "a.png", "question": "..."}, ...] → answers on stdout
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps
from tokenizers import Tokenizer


def load_image(path, manifest):
    """An 8-bit RGB uint8 array 3×H×W as the manifest says the graph takes it."""
    height, width = manifest["image"]["size"]
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def encode_texts(texts, folder, manifest):
    """Token ids and attention mask B×L, truncated and padded as the manifest says."""
    text = manifest["text"]
    tokenizer = Tokenizer.from_file(str(folder / text["tokenizer"]))
    tokenizer.enable_truncation(text["max_length"])
    rows = [e.ids for e in tokenizer.encode_batch(texts)]
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), text["pad_token_id"], dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if text["padding_side"] == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


def main(folder, requests_file):
    folder = Path(folder)
    manifest = json.loads((folder / "cmvl_export.json").read_text())
    requests = json.loads(Path(requests_file).read_text())
    images = np.stack([load_image(r["image"], manifest) for r in requests])
    ids, mask = encode_texts([r["question"] for r in requests], folder, manifest)
    session = onnxruntime.InferenceSession(str(folder / manifest["files"]["model"]), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images, "input_ids": ids, "attention_mask": mask})
    answers = [manifest["labels"][j] for j in logits.argmax(axis=1)]
    imported = sorted(name for name in ("torch", "cmvl") if name in sys.modules)
    print(json.dumps({"answers": answers, "logits": logits.tolist(), "imported": imported}))


if __name__ == "__main__":
    main(*sys.argv[1:])

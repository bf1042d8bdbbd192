"""A client of a captioning `cmvl export format=onnx` folder that uses only onnxruntime, tokenizers, Pillow and NumPy
(no torch, no cmvl): it follows cmvl_export.json to caption image files with the exported encoder and decoding step,
the greedy loop written here.

    python caption_client.py EXPORT_DIR a.png b.png ...   # → {"captions": [...], "imported": [...]} on stdout
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from onnx_client import load_image
from tokenizers import Tokenizer


def session(folder, name):
    return onnxruntime.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])


def caption(folder, images, manifest):
    encoder = session(folder, manifest["files"]["encoder"])
    step = session(folder, manifest["files"]["decoder_step"])
    fed = {i.name for i in step.get_inputs()}
    memory, mask = encoder.run(None, {"images": images})
    generation, shape = manifest["generation"], manifest["cache"]["shape"]
    rows = images.shape[0]
    keys = np.zeros([rows if d == "batch" else d for d in shape], dtype=np.float32)
    values = np.zeros_like(keys)
    token = np.full(rows, generation["bos_id"], dtype=np.int64)
    finished = np.zeros(rows, dtype=bool)
    written = []
    for position in range(generation["max_length"]):
        inputs = {
            "token": token,
            "position": np.array([position], dtype=np.int64),
            "memory": memory,
            "memory_mask": mask,
            "cache_keys": keys,
            "cache_values": values,
        }
        logits, keys, values = step.run(None, {k: v for k, v in inputs.items() if k in fed})
        token = np.where(finished, generation["pad_id"], logits.argmax(axis=1)).astype(np.int64)
        written.append(token)
        finished |= token == generation["eos_id"]
        if finished.all():
            break
    tokenizer = Tokenizer.from_file(str(folder / manifest["text"]["tokenizer"]))
    tokens = np.stack(written, axis=1).tolist()
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in tokens]


def main(folder, *image_files):
    folder = Path(folder)
    manifest = json.loads((folder / "cmvl_export.json").read_text())
    images = np.stack([load_image(path, manifest) for path in image_files])
    captions = caption(folder, images, manifest)
    imported = sorted(name for name in ("torch", "cmvl") if name in sys.modules)
    print(json.dumps({"captions": captions, "imported": imported}))


if __name__ == "__main__":
    main(*sys.argv[1:])

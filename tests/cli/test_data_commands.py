"""`cmvl data info` and `cmvl data prepare` on the real fixtures and on shapes, through the CLI."""

from __future__ import annotations

import json
import re

from PIL import Image

from tests.conftest import FIXTURES, TINY_WORLD, cli_in_process

VG = FIXTURES / "visual_genome"


def test_info_on_shapes_and_on_the_vqa_v2_fixture(tmp_path, tiny_world):
    shapes = cli_in_process("data", "info", *TINY_WORLD, cwd=tmp_path)
    assert shapes.returncode == 0, shapes.stderr[-2000:]
    assert re.search(r"qa +train +300 rows +60 images +300 annotated", shapes.stdout), shapes.stdout
    vqa = cli_in_process("data", "info", "dataset=vqa_v2", f"dataset.root={FIXTURES / 'vqa_v2'}", cwd=tmp_path)
    assert vqa.returncode == 0, vqa.stderr[-2000:]
    assert re.search(r"val +unavailable: VQA v2 annotations file not found", vqa.stdout), vqa.stdout
    bad = cli_in_process("data", "info", "dataset=vqa_v2", "dataset.rot=x", cwd=tmp_path)
    assert bad.returncode == 2 and "dataset.rot" in bad.stderr and "Traceback" not in bad.stderr


def test_prepare_writes_a_resized_resumable_copy_that_trains(tmp_path, cache_dir):
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": [4], "val": [5], "test": [5]}))
    dataset = ["dataset=visual_genome", f"dataset.root={VG}", f"dataset.split_file={split_file}"]
    out = tmp_path / "vg64"
    first = cli_in_process("data", "prepare", f"out={out}", "size=64", "workers=2", *dataset, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "wrote 2 images" in first.stdout and f"dataset.images={out}" in first.stdout
    for name in ("4.jpg", "5.jpg"):
        with Image.open(VG / "VG_100K" / name) as original, Image.open(out / "VG_100K" / name) as small:
            assert min(small.size) == 64
            assert abs(small.width / small.height - original.width / original.height) < 0.02
    again = cli_in_process("data", "prepare", f"out={out}", "size=64", *dataset, cwd=tmp_path)
    assert again.returncode == 0 and "wrote 0 images" in again.stdout
    run_dir = tmp_path / "run"
    small = ["trainer=debug", "data.num_workers=0", "task.min_answer_count=1", "model.dim=32"]
    train = cli_in_process("train", *dataset, f"dataset.images={out}", *small, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_prepare_decodes_images_as_training_does(tmp_path):
    """A 16-bit grey PNG is scaled to 8 bits (not clipped to white) and an RGBA one composited over white."""
    import numpy as np
    from PIL import Image

    from cmvl.data.inspect import _resize_one

    grey = tmp_path / "grey16.png"
    Image.fromarray(np.full((20, 20), 257 * 60, dtype=np.uint16)).save(grey)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(rgba)
    for src, expected in ((grey, 60), (rgba, 255)):
        dst = tmp_path / f"{src.stem}.jpg"
        _resize_one((str(src), str(dst), 16, 95))
        pixels = np.asarray(Image.open(dst))
        assert abs(int(pixels.mean()) - expected) <= 2, (src.name, pixels.mean())

"""Data-side figures: building the VQA v2 `qa` table from the official JSON files (time, resident memory), the cached
start (memory-mapped Arrow table), and image decoding per worker for raw COCO-sized JPEGs vs a `cmvl data prepare`
copy. Usage:

    .venv/bin/cmvl data shapes --out /tmp/vqa_scale --images 82783      # a VQA v2-sized world (~414k questions)
    .venv/bin/python scripts/bench_data.py --world /tmp/vqa_scale
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_IMAGES = [
    *sorted((REPO.parent / "shared" / "fixtures" / "coco" / "val2017").glob("*.jpg")),
    *sorted((REPO.parent / "shared" / "fixtures" / "vqa_v2" / "val2014").glob("*.jpg")),
    *sorted((REPO.parent / "shared" / "fixtures" / "visual_genome" / "VG_100K").glob("*.jpg")),
]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_table(world: Path) -> None:
    from cmvl.data.sources.shapes import SHAPES_IMAGE_PATTERN
    from cmvl.data.sources.vqa_v2 import VQAv2Source

    def source() -> VQAv2Source:
        subtypes = {"train": "train", "val": "val"}
        return VQAv2Source(root=str(world), subtypes=subtypes, image_pattern=SHAPES_IMAGE_PATTERN)

    before = rss_mb()
    start = time.perf_counter()
    table = source().table("qa", "train")
    built = time.perf_counter() - start
    after = rss_mb()
    start = time.perf_counter()
    cached = source().table("qa", "train")
    cached_s = time.perf_counter() - start
    assert cached.equals(table)
    questions = world / "v2_OpenEnded_mscoco_train_questions.json"
    annotations = world / "v2_mscoco_train_annotations.json"
    size_mb = (questions.stat().st_size + annotations.stat().st_size) / 2**20
    print(
        f"qa table: {table.num_rows:,} questions, {size_mb:.0f} MB of JSON, Arrow table {table.nbytes / 2**20:.0f} MB"
    )
    grew = after - before
    print(f"  first start (parse JSON, build table, check images): {built:6.2f} s, resident memory +{grew:.0f} MB")
    print(f"  cached start (memory-mapped table, check images)    : {cached_s:6.2f} s   ratio {built / cached_s:.1f}x")


def bench_images(repeats: int, size: int) -> None:
    from cmvl.data.images import build_transform, load_image
    from cmvl.data.inspect import _resize_one

    transform = build_transform(image_size=size, train=False)

    def rate(paths: list[Path]) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            for path in paths:
                transform(load_image(path))
        return repeats * len(paths) / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = []
        for i, path in enumerate(REAL_IMAGES):
            out = Path(tmp) / f"{i}.jpg"
            _resize_one((str(path), str(out), 384, 90))
            prepared.append(out)
        raw_rate, prepared_rate = rate(REAL_IMAGES), rate(prepared)
    print(f"image decode + resize to {size}px, one process, {len(REAL_IMAGES)} real COCO/VG images (~640x480):")
    print(f"  raw JPEGs               : {raw_rate:7.1f} images/s")
    print(f"  prepared (384 px) copies: {prepared_rate:7.1f} images/s   ratio {prepared_rate / raw_rate:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a shapes world written by `cmvl data shapes`")
    parser.add_argument("--repeats", type=int, default=40, help="passes over the real images")
    parser.add_argument("--size", type=int, default=224, help="training image size")
    args = parser.parse_args()
    os.environ["CMVL_CACHE_DIR"] = tempfile.mkdtemp(prefix="cmvl-bench-")  # a cold table cache
    bench_table(args.world)
    bench_images(args.repeats, args.size)


if __name__ == "__main__":
    main()

"""Data-side figures: building the VQA v2 `qa` table from the official JSON files (time, resident memory), the cached
start (memory-mapped Arrow table), image decoding per worker for raw COCO-sized JPEGs vs a `cmvl data prepare`
copy, and the loader workers' private memory over one epoch (it must not grow). Usage:

    .venv/bin/cmvl data shapes out=/tmp/vqa_scale images=82783        # a VQA v2-sized world (~414k questions)
    .venv/bin/python scripts/bench_data.py --world /tmp/vqa_scale

`--shards` instead: dataset=webdataset's stream (`cmvl.data.streaming`, one worker) over a synthetic set of tiny JPEG
samples in tar shards, written into a temporary folder, against a plain tar-reading loop (tarfile + PIL, the same
decode and resize) in the same run, with the stream's resident memory at its start, middle and end:

    .venv/bin/python scripts/bench_data.py --shards --samples 1000000
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


def _private_mb(pid: int) -> tuple[float, float]:
    """(dirty, clean) MB of pages only this process maps, from /proc/<pid>/smaps_rollup. Dirty: memory the worker
    wrote (its allocations, copy-on-write copies of the parent's objects); clean: file pages it read alone (the
    memory-mapped table cache), which the kernel can drop at any time."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(fields["Private_Dirty"].split()[0]) / 1024, int(fields["Private_Clean"].split()[0]) / 1024


def bench_workers(world: Path, workers: int, size: int) -> None:
    """One epoch of cmvl's real training loader over the world's `qa` split, `workers` loader processes: the
    private memory of each worker at the start, in the middle and at the end of the epoch."""
    import multiprocessing

    from cmvl.config.compose import compose_config
    from cmvl.training.build import build_datamodule

    subtypes = "{train:train,val:val}"
    cfg = compose_config(
        [
            "dataset=vqa_v2",
            f"dataset.root={world}",
            f"dataset.subtypes={subtypes}",
            "dataset.split=val",
            f"vision.image_size={size}",
            f"data.num_workers={workers}",
            "data.batch_size=256",
            "paths.output_dir=/tmp/cmvl-bench",
        ]
    )
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    loader = datamodule.train_dataloader()
    cached = loader.dataset.cache_images  # off here: a VQA v2-sized split does not fit data.image_cache_mb
    total, samples = len(loader), []
    start = time.perf_counter()
    for i, _ in enumerate(loader):
        if i in {10, *range(total // 8, total, total // 8), total - 1}:
            pids = [p.pid for p in multiprocessing.active_children()]
            samples.append((i, [_private_mb(pid) for pid in pids]))
    seconds = time.perf_counter() - start
    rows = len(loader) * 256
    print(f"one epoch of the training loader: {rows:,} questions in {total} batches, {workers} workers, {size} px, ")
    print(f"  decoded-image cache {'on' if cached else 'off'}: {rows / seconds:,.0f} questions/s")
    print("  private memory per worker, written (dirty) + read-only file pages (clean):")
    for i, private in samples:
        print(f"  after batch {i:>5}: " + ", ".join(f"{dirty:.0f} + {clean:.0f} MB" for dirty, clean in private))


def write_synthetic_shards(folder: Path, samples: int, shard_size: int) -> list[str]:
    """`samples` tiny JPEG + caption samples in shards of `shard_size` (webdataset's TarWriter); 256 distinct
    16×16 images, so writing costs little beside the reading measured."""
    import io

    import numpy as np
    from PIL import Image
    from webdataset import TarWriter

    rng = np.random.default_rng(0)
    images = []
    for _ in range(256):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    shards = []
    for start in range(0, samples, shard_size):
        path = folder / f"{start // shard_size:06d}.tar"
        with TarWriter(str(path), encoder=False) as writer:
            for i in range(start, min(samples, start + shard_size)):
                writer.write({"__key__": f"{i:09d}", "jpg": images[i % 256], "txt": f"sample {i}".encode()})
        shards.append(str(path))
    return shards


def plain_tar_loop(shards: list[str], transform) -> int:
    """The baseline: tarfile reading each shard as a stream, each image decoded by PIL as every cmvl loader decodes
    (`decode_image`: upright, RGB) and resized alike, so what differs is the stream's own reading and bookkeeping."""
    import io
    import tarfile

    from cmvl.data.images import decode_image

    done = 0
    for shard in shards:
        with tarfile.open(shard, "r|") as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".jpg"):
                    transform(decode_image(io.BytesIO(data), name=member.name))
                    done += 1
                else:
                    data.decode()
    return done


def bench_shards(samples: int, shard_size: int, size: int, shuffle_buffer: int) -> dict[str, float]:
    """Samples/s of the plain loop and of the stream in one process on one thread, measured in turns (a shard's
    worth of each, alternately, so a shared machine's changing load falls on both alike), and the stream's RSS in
    MB at its start, middle and end; printed and returned."""
    import torch

    from cmvl.data.images import build_transform
    from cmvl.data.shards import TarSamples, count_samples
    from cmvl.data.streaming import ShardStream, WorkerStream

    torch.set_num_threads(1)  # per core: the resize runs on one thread, as in a loader worker
    transform = build_transform(image_size=size, train=True)
    with tempfile.TemporaryDirectory(prefix="cmvl-shards-") as folder:
        started = time.perf_counter()
        shards = write_synthetic_shards(Path(folder), samples, shard_size)
        print(f"wrote {samples:,} samples in {len(shards)} shards in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        counts = [count_samples(shard) for shard in shards]
        print(f"counted them (member headers only) in {time.perf_counter() - started:.1f} s")
        stream = ShardStream(
            shards,
            counts,
            reader=TarSamples(),
            transform=transform,
            batch_size=1,
            seed=0,
            shuffle_buffer=shuffle_buffer,
            max_bad_fraction=0.0,
        )
        items = iter(WorkerStream(stream, epoch=0, slot=0))
        plain_s = stream_s = 0.0
        plain_n = streamed = 0
        rss = {"start": rss_mb()}
        for k, shard in enumerate(shards):
            started = time.perf_counter()
            plain_n += plain_tar_loop([shard], transform)
            plain_s += time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(counts[k]):
                next(items)
            stream_s += time.perf_counter() - started
            streamed += counts[k]
            if k == len(shards) // 2:
                rss["middle"] = rss_mb()
        rss["end"] = rss_mb()
    plain, streaming = plain_n / plain_s, streamed / stream_s
    print(f"plain tarfile + PIL loop: {plain:,.0f} samples/s (one process, one thread, {size} px)")
    print(
        f"dataset=webdataset stream: {streaming:,.0f} samples/s (shuffle_buffer={shuffle_buffer}), "
        f"{streaming / plain:.1%} of the plain loop"
    )
    print("  its resident memory: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))
    return {"plain": plain, "stream": streaming, **{f"rss_{k}": v for k, v in rss.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, help="a shapes world written by `cmvl data shapes`")
    parser.add_argument("--shards", action="store_true", help="the shard-streaming benchmark instead (no world)")
    parser.add_argument("--samples", type=int, default=1_000_000, help="--shards: synthetic samples")
    parser.add_argument("--shard-size", type=int, default=10_000, help="--shards: samples per shard")
    parser.add_argument("--shuffle-buffer", type=int, default=1000, help="--shards: the stream's shuffle buffer")
    parser.add_argument("--repeats", type=int, default=40, help="passes over the real images")
    parser.add_argument("--size", type=int, default=224, help="training image size")
    parser.add_argument("--workers", type=int, default=2, help="loader processes for the epoch of the loader")
    args = parser.parse_args()
    if args.shards:
        bench_shards(args.samples, args.shard_size, 32 if args.size == 224 else args.size, args.shuffle_buffer)
        return
    if args.world is None:
        parser.error("--world is required (or --shards)")
    os.environ["CMVL_CACHE_DIR"] = tempfile.mkdtemp(prefix="cmvl-bench-")  # a cold table cache
    bench_table(args.world)
    bench_images(args.repeats, args.size)
    bench_workers(args.world, args.workers, args.size)


if __name__ == "__main__":
    main()

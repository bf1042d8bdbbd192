"""`cmvl data shapes|info|prepare`: write the shapes world, show what a dataset config reads, resize its images.

cmvl data shapes --out DIR [--images N] [--seed S] [--size PX]
cmvl data info [dataset=... dataset.root=...]
cmvl data prepare --out DIR [--size 384] [--workers N] [dataset=... dataset.root=...]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cmvl.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmvl data", description="Dataset utilities.")
    sub = parser.add_subparsers(dest="action", required=True)
    shapes = sub.add_parser("shapes", help="write the built-in shapes world in the official layouts")
    shapes.add_argument("--out", required=True, type=Path, help="folder to create (must not exist yet)")
    shapes.add_argument("--images", type=int, default=4000, help="training images; val and test get 1/8 each")
    shapes.add_argument("--questions-per-image", type=int, default=5, help="VQA questions per image")
    shapes.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same bytes)")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels")
    shapes.add_argument("--max-objects", type=int, default=5, help="at most this many shapes per image")
    info = sub.add_parser("info", help="rows, images and answer types of every split a dataset config reads")
    info.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset=vqa_v2 dataset.root=/data/vqa")
    prepare = sub.add_parser("prepare", help="write a resized copy of a dataset's images (then set dataset.images)")
    prepare.add_argument("--out", required=True, type=Path, help="folder for the copy (same relative paths)")
    prepare.add_argument("--size", type=int, default=384, help="shorter side in pixels (never upscaled)")
    prepare.add_argument("--quality", type=int, default=90, help="JPEG quality")
    prepare.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes resizing images")
    prepare.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset=vqa_v2 dataset.root=/data/vqa")
    return parser


def _source(overrides: list[str]):
    from cmvl.config.compose import compose_config
    from cmvl.config.preflight import preflight
    from cmvl.training.build import build_source

    preflight(overrides, check_task=False, training=False)  # the data commands read every table kind, whatever the task
    return build_source(compose_config(overrides))


def data_command(args: list[str]) -> None:
    parsed = _parser().parse_args(args)
    if parsed.action in ("shapes", "prepare"):
        from cmvl.config.writable import check_writable_dir

        check_writable_dir(parsed.out, "--out ")
    if parsed.action == "info":
        from cmvl.data.inspect import format_report, read_splits, split_report

        source = _source(parsed.overrides)
        print(format_report(source.name, source.image_root, split_report(read_splits(source))))
        return
    if parsed.action == "prepare":
        from cmvl.data.inspect import prepare_images

        source = _source(parsed.overrides)
        done = prepare_images(
            source, parsed.out, size=parsed.size, quality=parsed.quality, workers=max(1, parsed.workers)
        )
        print(f"wrote {done['written']} images to {parsed.out} (shorter side <= {parsed.size} px)")
        if done["outside_image_root"]:
            print(f"left {done['outside_image_root']} images outside {source.image_root} as they are")
        print(f"train on the copy with: dataset.images={parsed.out.resolve()}")
        return
    from cmvl.data.shapes.world import ShapesSpec, ensure_shapes_world

    if parsed.out.exists() and any(parsed.out.iterdir()):
        raise UserError(f"--out {parsed.out} exists and is not empty; choose a new folder")
    if parsed.images < 1 or parsed.size < 16 or parsed.max_objects < 1:
        raise UserError("--images must be >= 1, --size >= 16 and --max-objects >= 1")
    held_out = max(1, parsed.images // 8)
    spec = ShapesSpec(
        images={"train": parsed.images, "val": held_out, "test": held_out},
        questions_per_image=parsed.questions_per_image,
        size=parsed.size,
        max_objects=parsed.max_objects,
        seed=parsed.seed,
    )
    if parsed.out.exists():
        parsed.out.rmdir()  # empty: let the atomic writer create it
    root = ensure_shapes_world(parsed.out, spec)
    print(f"shapes world written to {root} ({sum(spec.images.values())} images)")

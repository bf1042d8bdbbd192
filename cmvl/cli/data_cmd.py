"""`cmvl data shapes|info|prepare|shards`: write the shapes world, show what a dataset config reads, resize its
images, write a captions dataset as tar shards.

cmvl data shapes out=DIR [images=N] [seed=S] [size=PX]
cmvl data info [dataset=... dataset.root=...]
cmvl data prepare out=DIR [size=384] [workers=N] [dataset=... dataset.root=...]
cmvl data shards out=DIR [shard_size=N] [splits=train,val] [dataset=... dataset.root=...]
"""

from __future__ import annotations

import os

from cmvl.cli.args import Option, Spec, integer, parse, path, wants_help
from cmvl.errors import UserError

DATASET_OVERRIDES = "config overrides that pick the dataset, e.g. dataset=vqa_v2 dataset.root=/data/vqa"

SHAPES = Spec(
    "data shapes",
    "Writes the built-in shapes world in the official layouts (VQA v2, COCO, Visual Genome) into a new folder.",
    (
        Option("out", "folder to create (must not exist yet, or be empty)", path, metavar="DIR"),
        Option("images", "training images; val and test get 1/8 each", integer(1), 4000, "N"),
        Option("questions_per_image", "VQA questions per image", integer(1), 5, "N"),
        Option("seed", "generator seed (same seed, same bytes)", integer(0), 0, "S"),
        Option("size", "image side in pixels", integer(16), 64, "PX"),
        Option("max_objects", "at most this many shapes per image", integer(1), 5, "N"),
    ),
)
INFO = Spec(
    "data info",
    "Rows, images and answer types of every split a dataset config reads.",
    (),
    overrides=DATASET_OVERRIDES,
)
PREPARE = Spec(
    "data prepare",
    "Writes a resized copy of a dataset's images, at the same relative paths; then train with dataset.images=DIR.",
    (
        Option("out", "folder for the copy (same relative paths)", path, metavar="DIR"),
        Option("size", "shorter side in pixels (never upscaled)", integer(1), 384, "PX"),
        Option("quality", "JPEG quality", integer(1, 100), 90, "Q"),
        Option("workers", "processes resizing images", integer(1), os.cpu_count() or 1, "N"),
    ),
    overrides=DATASET_OVERRIDES,
)

SHARDS = Spec(
    "data shards",
    "Writes a captions dataset as image-text tar shards (img2dataset's layout) for dataset=webdataset.",
    (
        Option(
            "out",
            "folder to create: <out>/<split>/000000.tar, ... (must not exist yet, or be empty)",
            path,
            metavar="DIR",
        ),
        Option("shard_size", "samples (caption rows) per shard", integer(1), 10000, "N"),
        Option("splits", "comma-separated splits to write; default: every split of the dataset", str, "", "S,S"),
    ),
    overrides=DATASET_OVERRIDES,
)


def _source(overrides: list[str]):
    from cmvl.config.compose import compose_config
    from cmvl.config.preflight import preflight
    from cmvl.training.build import build_source

    preflight(overrides, check_task=False, training=False)  # the data commands read every table kind, whatever the task
    return build_source(compose_config(overrides))


def _check_out(out) -> None:
    from cmvl.config.writable import check_writable_dir

    check_writable_dir(out, "out=")


def info_command(args: list[str]) -> None:
    if wants_help(args):
        print(INFO.help())
        return
    from cmvl.data.inspect import format_report, read_splits, split_report

    source = _source(parse(INFO, args).overrides)
    print(format_report(source.name, source.image_root, split_report(read_splits(source))))


def prepare_command(args: list[str]) -> None:
    if wants_help(args):
        print(PREPARE.help())
        return
    parsed = parse(PREPARE, args)
    out = parsed["out"]
    _check_out(out)
    from cmvl.data.inspect import prepare_images

    source = _source(parsed.overrides)
    done = prepare_images(source, out, size=parsed["size"], quality=parsed["quality"], workers=parsed["workers"])
    print(f"wrote {done['written']} images to {out} (shorter side <= {parsed['size']} px)")
    if done["outside_image_root"]:
        print(f"left {done['outside_image_root']} images outside {source.image_root} as they are")
    print(f"train on the copy with: dataset.images={out.resolve()}")


def shapes_command(args: list[str]) -> None:
    if wants_help(args):
        print(SHAPES.help())
        return
    parsed = parse(SHAPES, args)
    out = parsed["out"]
    _check_out(out)
    from cmvl.data.shapes.world import ShapesSpec, ensure_shapes_world

    if out.exists() and any(out.iterdir()):
        raise UserError(f"out={out} exists and is not empty; choose a new folder")
    held_out = max(1, parsed["images"] // 8)
    spec = ShapesSpec(
        images={"train": parsed["images"], "val": held_out, "test": held_out},
        questions_per_image=parsed["questions_per_image"],
        size=parsed["size"],
        max_objects=parsed["max_objects"],
        seed=parsed["seed"],
    )
    if out.exists():
        out.rmdir()  # empty: let the atomic writer create it
    root = ensure_shapes_world(out, spec)
    print(f"shapes world written to {root} ({sum(spec.images.values())} images)")


def shards_command(args: list[str]) -> None:
    if wants_help(args):
        print(SHARDS.help())
        return
    parsed = parse(SHARDS, args)
    out = parsed["out"]
    _check_out(out)
    from cmvl.data.shard_writer import write_shards

    source = _source(parsed.overrides)
    splits = [s for s in parsed["splits"].split(",") if s] or list(source.splits)
    written = write_shards(source, out, splits=splits, shard_size=parsed["shard_size"])
    for split, (samples, pattern) in written.items():
        print(f"{split}: {samples} samples in {pattern}")
    keys = " ".join(f"'dataset.{split}=\"{pattern}\"'" for split, (_, pattern) in written.items())
    print(f"train on them with: dataset=webdataset {keys}")

"""`cmvl data shapes --out DIR [--images N] [--seed S] [--size PX]`: write the shapes world."""

from __future__ import annotations

import argparse
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
    return parser


def data_command(args: list[str]) -> None:
    parsed = _parser().parse_args(args)
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

"""A grounding or detection result drawn on the user's image (`cmvl predict ... draw=out.png`)."""

from __future__ import annotations

from pathlib import Path

from PIL import ImageDraw

from cmvl.atomic_file import atomic_write
from cmvl.inference.inputs import ImageInput, open_input_image


def draw_boxes(image: ImageInput, boxes: list[tuple[tuple[float, float, float, float], str]], path: Path) -> Path:
    """`image` (upright, as it was predicted on) with each box (x, y, w, h in its pixels) in red and its label above
    it, written to `path` as a PNG (atomically: never half-written)."""
    picture = open_input_image(image).copy()
    pen = ImageDraw.Draw(picture)
    width = max(1, round(min(picture.size) / 100))
    for (x, y, w, h), label in boxes:
        pen.rectangle([x, y, x + w, y + h], outline=(255, 0, 0), width=width)
        pen.text((x + width, max(0.0, y - 12)), label, fill=(255, 0, 0))
    with atomic_write(path, "wb") as f:
        picture.save(f, format="PNG")
    return path

"""A relevance map drawn over its image: the map upsampled to the picture, coloured, blended, with a title."""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

SIDE = 256  # pixels per side of the drawn image
ALPHA = 0.5  # how much of the heat map covers the image
TITLE_LINE = 14
BOX_COLOUR = "red"


def heat_over(image_HW3: np.ndarray, map_hw: np.ndarray, *, side: int = SIDE, alpha: float = ALPHA) -> Image.Image:
    """`image_HW3` (uint8) at side×side with `map_hw` (any scale, any h×w) stretched over it, scaled to its own
    range (a map that is all equal is drawn as no heat), coloured by matplotlib's `inferno`."""
    picture = Image.fromarray(image_HW3).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    values = np.asarray(map_hw, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    heat = Image.fromarray((scaled * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    coloured = colormaps["inferno"](np.asarray(heat, dtype=np.float32) / 255.0)[..., :3]
    blended = (1 - alpha) * np.asarray(picture, dtype=np.float32) + alpha * 255.0 * coloured
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def overlay_picture(
    image_HW3: np.ndarray, map_hw: np.ndarray, title: str, box_xyxy: list[float] | None = None
) -> Image.Image:
    """The heat map over the image, `title` (wrapped) above it and, where given, a box (x0 y0 x1 y1 in [0, 1])."""
    font = ImageFont.load_default(size=12)
    lines = [w for line in title.split("\n") for w in textwrap.wrap(line, SIDE // 7) or [""]]
    top = 4 + TITLE_LINE * len(lines)
    canvas = Image.new("RGB", (SIDE + 8, SIDE + top + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, 2 + k * TITLE_LINE), line, fill="black", font=font)
    canvas.paste(heat_over(image_HW3, map_hw), (4, top))
    if box_xyxy is not None:
        x0, y0, x1, y1 = (4 + v * SIDE if i % 2 == 0 else top + v * SIDE for i, v in enumerate(box_xyxy))
        draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOUR, width=2)
    return canvas

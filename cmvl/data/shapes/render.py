"""Rasterise a shapes scene into a PIL image."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from cmvl.data.shapes.scene import BACKGROUND, COLORS, Scene, ShapeObject

_SUPERSAMPLE = 4  # draw large, then downsample: anti-aliased edges like a photographed object


def render_scene(scene: Scene) -> Image.Image:
    side = scene.size * _SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, _SUPERSAMPLE)
    return image.resize((scene.size, scene.size), Image.Resampling.LANCZOS)


def shape_polygon(obj: ShapeObject, scale: float = 1.0) -> list[tuple[float, float]]:
    """Outline of the shape (a 32-gon for circles), used for drawing and for COCO segmentations."""
    cx, cy, r = obj.cx * scale, obj.cy * scale, obj.r * scale
    if obj.shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if obj.shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx + r * math.cos(2 * math.pi * k / 32), cy + r * math.sin(2 * math.pi * k / 32)) for k in range(32)]


def shape_area(obj: ShapeObject) -> float:
    if obj.shape == "square":
        return (2 * obj.r) ** 2
    if obj.shape == "triangle":
        return 2 * obj.r * obj.r
    return math.pi * obj.r * obj.r


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, scale: float) -> None:
    color = COLORS[obj.color]
    if obj.shape == "circle":
        cx, cy, r = obj.cx * scale, obj.cy * scale, obj.r * scale
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        draw.polygon(shape_polygon(obj, scale), fill=color)

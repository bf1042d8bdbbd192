"""Random scenes of coloured shapes: the ground truth every shapes-world annotation is derived from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 205, 30),
    "purple": (150, 50, 200),
    "cyan": (40, 200, 210),
}
SIZES = {"small": 0.09, "large": 0.15}  # half-extent as a fraction of the image side
BACKGROUND = (236, 236, 236)


@dataclass(frozen=True)
class ShapeObject:
    """One shape; (cx, cy) is its centre and r its half-extent, in pixels."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    r: float

    @property
    def box_xywh(self) -> tuple[float, float, float, float]:
        return (self.cx - self.r, self.cy - self.r, 2 * self.r, 2 * self.r)

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    image_id: int
    size: int
    objects: tuple[ShapeObject, ...]


def sample_scene(rng: np.random.Generator, *, image_id: int, size: int, max_objects: int = 5) -> Scene:
    """1 to `max_objects` non-overlapping shapes with uniformly drawn shape, colour, size and position."""
    count = int(rng.integers(1, max_objects + 1))
    objects: list[ShapeObject] = []
    attempts = 0
    while len(objects) < count and attempts < 200:
        attempts += 1
        size_name = str(rng.choice(list(SIZES)))
        r = SIZES[size_name] * size
        cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
        # Keep a gap so that left/right/above/below and counts stay unambiguous to the eye.
        if any(np.hypot(cx - o.cx, cy - o.cy) < r + o.r + 0.04 * size for o in objects):
            continue
        objects.append(
            ShapeObject(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), size_name, float(cx), float(cy), r)
        )
    return Scene(image_id=image_id, size=size, objects=tuple(objects))

"""Five reference captions per shapes scene, worded differently the way COCO's annotators word them."""

from __future__ import annotations

import numpy as np

from cmvl.data.shapes.questions import NUMBER_WORDS, RELATIONS, is_related
from cmvl.data.shapes.scene import Scene


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _listing(scene: Scene, with_size: bool) -> str:
    parts = [
        f"{_article(o.size if with_size else o.color)} {o.phrase if with_size else f'{o.color} {o.shape}'}"
        for o in sorted(scene.objects, key=lambda o: o.cx)
    ]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _relation_sentence(scene: Scene, rng: np.random.Generator) -> str | None:
    margin = 0.05 * scene.size
    pairs = [
        (a, b, rel)
        for a in scene.objects
        for b in scene.objects
        if a is not b
        for rel in RELATIONS
        if is_related(a, b, rel, margin)
    ]
    if not pairs:
        return None
    a, b, rel = pairs[int(rng.integers(len(pairs)))]
    return f"{_article(a.color)} {a.color} {a.shape} {rel} {_article(b.color)} {b.color} {b.shape}"


def make_captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    n = len(scene.objects)
    count = f"{NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}"
    relation = _relation_sentence(scene, rng)
    shapes = sorted({o.shape for o in scene.objects})
    captions = [
        f"{_listing(scene, with_size=False).capitalize()}.",
        f"{count.capitalize()} on a gray background: {_listing(scene, with_size=True)}.",
        f"There {'are' if n > 1 else 'is'} {count} in the picture.",
        f"{relation.capitalize()}." if relation else f"A single {scene.objects[0].phrase} on its own.",
        f"A picture with {' and '.join(s + 's' for s in shapes)} of {'different colors' if n > 1 else 'one color'}.",
    ]
    return captions

"""Questions with unambiguous answers about a shapes scene, and the 10 human-like answers VQA v2 records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cmvl.data.shapes.scene import COLORS, SHAPES, Scene, ShapeObject
from cmvl.metrics.vqa_normalize import normalize_answer

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Question:
    text: str
    question_type: str  # the VQA v2 question prefix, e.g. "how many"
    answer_type: str  # "yes/no" | "number" | "other"
    answer: str  # canonical answer


def is_related(a: ShapeObject, b: ShapeObject, relation: str, margin: float) -> bool:
    """Whether `a` is `relation` `b` (e.g. a is left of b), with a margin so that the answer is clear."""
    if relation == "left of":
        return a.cx < b.cx - margin
    if relation == "right of":
        return a.cx > b.cx + margin
    if relation == "above":
        return a.cy < b.cy - margin
    return a.cy > b.cy + margin


def _unique(objects: tuple[ShapeObject, ...], **attrs: str) -> ShapeObject | None:
    found = [o for o in objects if all(getattr(o, k) == v for k, v in attrs.items())]
    return found[0] if len(found) == 1 else None


def _exist(scene: Scene, rng: np.random.Generator) -> Question | None:
    present = {(o.color, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        color, shape = sorted(present)[int(rng.integers(len(present)))]
    else:
        absent = sorted({(c, s) for c in COLORS for s in SHAPES} - present)
        color, shape = absent[int(rng.integers(len(absent)))]
    answer = "yes" if (color, shape) in present else "no"
    return Question(f"Is there a {color} {shape}?", "is there a", "yes/no", answer)


def _count(scene: Scene, rng: np.random.Generator) -> Question | None:
    kind = int(rng.integers(3))
    if kind == 0:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        n = sum(o.shape == shape for o in scene.objects)
        text = f"How many {shape}s are there?"
    elif kind == 1:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        n = sum(o.color == color for o in scene.objects)
        text = f"How many {color} shapes are there?"
    else:
        n = len(scene.objects)
        text = "How many shapes are there?"
    return Question(text, "how many", "number", str(n))


def _color(scene: Scene, rng: np.random.Generator) -> Question | None:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if _unique(scene.objects, shape=obj.shape):
        return Question(f"What color is the {obj.shape}?", "what color is the", "other", obj.color)
    if _unique(scene.objects, shape=obj.shape, size=obj.size):
        return Question(f"What color is the {obj.size} {obj.shape}?", "what color is the", "other", obj.color)
    return None


def _shape(scene: Scene, rng: np.random.Generator) -> Question | None:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if _unique(scene.objects, color=obj.color):
        return Question(f"What shape is the {obj.color} object?", "what is the", "other", obj.shape)
    return None


def _relation_color(scene: Scene, rng: np.random.Generator) -> Question | None:
    anchor = scene.objects[int(rng.integers(len(scene.objects)))]
    if not _unique(scene.objects, color=anchor.color, shape=anchor.shape):
        return None
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    margin = 0.05 * scene.size
    hits = [o for o in scene.objects if o is not anchor and is_related(o, anchor, relation, margin)]
    others = [o for o in scene.objects if o is not anchor]
    # Exactly one shape on that side, and no other shape close to the dividing line (no borderline cases).
    borderline = [o for o in others if o not in hits and is_related(o, anchor, relation, -margin)]
    if len(hits) != 1 or borderline:
        return None
    text = f"What color is the shape {relation} the {anchor.color} {anchor.shape}?"
    return Question(text, "what color is the", "other", hits[0].color)


def _relation_yes_no(scene: Scene, rng: np.random.Generator) -> Question | None:
    if len(scene.objects) < 2:
        return None
    i, j = rng.choice(len(scene.objects), size=2, replace=False)
    a, b = scene.objects[int(i)], scene.objects[int(j)]
    if not (
        _unique(scene.objects, color=a.color, shape=a.shape) and _unique(scene.objects, color=b.color, shape=b.shape)
    ):
        return None
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    margin = 0.05 * scene.size
    if is_related(a, b, relation, margin):
        answer = "yes"
    elif not is_related(a, b, relation, -margin):
        answer = "no"
    else:
        return None  # too close to call
    return Question(f"Is the {a.color} {a.shape} {relation} the {b.color} {b.shape}?", "is the", "yes/no", answer)


QUESTION_KINDS: dict[str, tuple[Callable[[Scene, np.random.Generator], Question | None], float]] = {
    "exist": (_exist, 0.2),
    "count": (_count, 0.2),
    "color": (_color, 0.2),
    "shape": (_shape, 0.15),
    "relation_color": (_relation_color, 0.1),
    "relation_yes_no": (_relation_yes_no, 0.15),
}


def sample_questions(scene: Scene, rng: np.random.Generator, count: int) -> list[Question]:
    """Up to `count` distinct questions, kinds drawn by weight; kinds that do not apply to a scene are retried."""
    makers = list(QUESTION_KINDS.values())
    weights = np.array([w for _, w in makers])
    weights = weights / weights.sum()
    questions: list[Question] = []
    seen: set[str] = set()
    for _ in range(count * 8):
        if len(questions) == count:
            break
        make = makers[int(rng.choice(len(makers), p=weights))][0]
        question = make(scene, rng)
        if question is not None and question.text not in seen:
            seen.add(question.text)
            questions.append(question)
    return questions


def _surface_variant(answer: str, answer_type: str, rng: np.random.Generator) -> str:
    """How a real annotator may write the same answer differently."""
    if answer_type == "number" and int(answer) < len(NUMBER_WORDS):
        return NUMBER_WORDS[int(answer)]
    forms = (answer.capitalize(), answer + ".", answer + "!", " " + answer)
    return forms[int(rng.integers(len(forms)))]


def _plausible_wrong(question: Question, rng: np.random.Generator) -> str:
    if question.answer_type == "yes/no":
        return "no" if question.answer == "yes" else "yes"
    if question.answer_type == "number":
        n = int(question.answer)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    pool = [c for c in (SHAPES if question.answer in SHAPES else COLORS) if c != question.answer]
    return pool[int(rng.integers(len(pool)))]


def annotate(question: Question, rng: np.random.Generator) -> tuple[list[dict], str]:
    """Ten VQA v2 answer records and the `multiple_choice_answer`.

    Most questions get ten identical answers; some get surface variants ("2"/"two", "Yes"/"yes.") and a few
    get 1–3 disagreeing annotators, which produces the official 0.3/0.6/0.9 partial scores.
    """
    answers = [question.answer] * 10
    confidence = ["yes"] * 10
    if rng.random() < 0.2:
        for k in rng.choice(10, size=int(rng.integers(1, 3)), replace=False):
            answers[int(k)] = _surface_variant(question.answer, question.answer_type, rng)
    if rng.random() < 0.08:
        wrong = _plausible_wrong(question, rng)
        for k in rng.choice(10, size=int(rng.integers(1, 4)), replace=False):
            answers[int(k)] = wrong
            confidence[int(k)] = "maybe"
    records = [
        {"answer": a, "answer_confidence": c, "answer_id": i + 1} for i, (a, c) in enumerate(zip(answers, confidence))
    ]
    majority = Counter(normalize_answer(a) for a in answers).most_common(1)[0][0]
    return records, majority

"""Can the maps of `cmvl explain` be trusted? Measured on the shapes world, where every object a question names has
a known box.

    .venv/bin/python scripts/bench_explain.py ckpt=outputs/.../checkpoints/best.ckpt [limit=2500] [out=bench.json]

For a VQA checkpoint's validation questions (those that name objects present in the image: the objects of an
`is there a …`, `what color is the …`, `what shape is the … object` question, all objects counted by a `how many`
question and both objects of a relation question; absent-object questions are left out), with the predicted answer
explained:

- pointing game: the share of questions whose map maximum (the map upsampled bilinearly to the image's pixels) falls
  inside a referred object's box; energy: the share of the map's mass inside the boxes. Both against the box-area
  baseline (the share of the image the boxes cover: what a random point or a flat map scores).
- model-weights randomisation (Adebayo et al., 2018): the same for a model of the same config with freshly
  initialised weights, whose maps must score near the baseline if the maps depend on what the model learnt.
- deletion: VQA accuracy after the top 20% of the grid cells by the map are replaced by the image's mean grid token,
  against replacing a random 20% of the cells (the accuracy drops, and their ratio).
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmvl.data.shapes.questions import is_related
from cmvl.data.shapes.scene import SHAPES
from cmvl.data.shapes.world import image_file
from cmvl.explain.maps import RecordedAttention
from cmvl.explain.relevance import batch_relevance, encode_for_maps, word_token_mask
from cmvl.models.tokens import Tokens

DELETED_SHARE = 0.2  # the share of grid cells deletion masks
# Zhang et al.'s pointing game counts a maximum within 15 px of the object (of a 224 px image) as a hit: 1/15 of the
# side, reported beside the strict count (and its own area baseline: the boxes grown by as much)
TOLERANCE_SHARE = 15 / 224
BATCH = 64


@dataclass(frozen=True)
class Box:
    shape: str
    color: str
    size: str
    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


def referred_objects(question: str, objects: list[Box], side: int) -> list[Box]:
    """The objects `question` names (see the module docstring); [] for a question about absent objects."""

    def find(**attrs: str) -> list[Box]:
        return [o for o in objects if all(getattr(o, k) == v for k, v in attrs.items())]

    q = question.rstrip("?")
    if q == "How many shapes are there":
        return list(objects)
    if m := re.fullmatch(r"How many (\w+) shapes are there", q):
        return find(color=m[1])
    if m := re.fullmatch(r"How many (\w+)s are there", q):
        return find(shape=m[1])
    if m := re.fullmatch(r"Is there a (\w+) (\w+)", q):
        return find(color=m[1], shape=m[2])
    if m := re.fullmatch(r"What color is the shape (left of|right of|above|below) the (\w+) (\w+)", q):
        anchors = find(color=m[2], shape=m[3])
        hits = [o for o in objects for a in anchors if o is not a and is_related(o, a, m[1], 0.05 * side)]
        return anchors + hits
    if m := re.fullmatch(r"What color is the (small|large) (\w+)", q):
        return find(size=m[1], shape=m[2])
    if m := re.fullmatch(r"What color is the (\w+)", q):
        return find(shape=m[1])
    if m := re.fullmatch(r"What shape is the (\w+) object", q):
        return find(color=m[1])
    if m := re.fullmatch(r"Is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)", q):
        return find(color=m[1], shape=m[2]) + find(color=m[4], shape=m[5])
    raise ValueError(f"a shapes question of no known form: {question!r}")


def box_mask(boxes: list[Box], side: int, margin: float = 0.0) -> np.ndarray:
    """side×side bool: the pixels inside any of `boxes` grown by `margin` pixels on every side (pixel centres)."""
    centres = np.arange(side) + 0.5
    mask = np.zeros((side, side), dtype=bool)
    for b in boxes:
        inside_x = (centres >= b.x - margin) & (centres <= b.x + b.w + margin)
        inside_y = (centres >= b.y - margin) & (centres <= b.y + b.h + margin)
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask


def read_questions(root: Path, split: str, limit: int | None) -> list[dict]:
    """The split's questions with their image file, human answers and referred objects' mask (absent ones left out)."""
    questions = json.loads((root / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]
    annotations = {
        a["question_id"]: [x["answer"] for x in a["answers"]]
        for a in json.loads((root / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]
    }
    instances = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    sides = {i["id"]: i["width"] for i in instances["images"]}
    objects: dict[int, list[Box]] = {}
    for a in instances["annotations"]:
        color, size = a["attributes"]
        box = Box(SHAPES[a["category_id"] - 1], color, size, *a["bbox"])
        objects.setdefault(a["image_id"], []).append(box)
    rows = []
    for q in questions:
        side = sides[q["image_id"]]
        referred = referred_objects(q["question"], objects.get(q["image_id"], []), side)
        if referred:
            rows.append(
                {
                    "image": root / image_file(split, q["image_id"]),
                    "question": q["question"],
                    "answers": annotations[q["question_id"]],
                    "mask": box_mask(referred, side),
                    "tolerant_mask": box_mask(referred, side, TOLERANCE_SHARE * side),
                }
            )
    return rows[:limit] if limit else rows


def pointing_and_energy(maps_BHW: torch.Tensor, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per question: whether the upsampled map's maximum is inside the boxes, and its mass share inside them."""
    side = masks.shape[-1]
    up = F.interpolate(maps_BHW[:, None].float(), size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    up = up.clamp(min=0).cpu().numpy()
    flat = up.reshape(len(up), -1)
    hit = masks.reshape(len(up), -1)[np.arange(len(up)), flat.argmax(axis=1)]
    total = flat.sum(axis=1)
    inside = (flat * masks.reshape(len(up), -1)).sum(axis=1)
    energy = np.where(total > 0, inside / np.maximum(total, 1e-12), masks.reshape(len(up), -1).mean(axis=1))
    return hit.astype(np.float64), energy


def masked_vision(vision: Tokens, cells_BK: torch.Tensor) -> Tokens:
    """`vision` with the grid tokens `cells_BK` (indices into each row's H·W grid) set to that image's mean token."""
    height, width = vision.grid
    feats = vision.feats.clone()
    grid = feats[:, -height * width :]  # a view: written through into feats
    mean = grid.mean(dim=1, keepdim=True)
    rows = torch.arange(len(grid), device=grid.device)[:, None].expand_as(cells_BK)
    grid[rows, cells_BK] = mean.expand(-1, cells_BK.shape[1], -1)
    return Tokens(feats, vision.mask, vision.grid)


def vqa_scores(task, model, vision: Tokens, text: Tokens, answers: list[list[str]]) -> np.ndarray:
    """The official VQA score of the model's arg-max answer to each question."""
    with torch.no_grad():
        logits = model.heads[task.name](model.fusion(vision, text).pooled)
    predicted = [task.answers[j] for j in logits.argmax(dim=1).tolist()]
    return np.array([task.rules.score(p, human) for p, human in zip(predicted, answers)])


def measure(run, model, rows: list[dict], methods: list[str], *, deletion: bool, seed: int) -> dict:
    """Pointing, energy (and deletion) of `model` (the run's, or a randomised one) over `rows`."""
    from cmvl.inference.inputs import run_images, run_texts

    generator = torch.Generator().manual_seed(seed)
    special = list(run.tokenizer.all_special_ids)
    sums: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(rows), BATCH):
        part = rows[start : start + BATCH]
        images = run_images(run, [r["image"] for r in part]).to(run.device)
        ids, mask = run_texts(run, [r["question"] for r in part])
        ids, mask = ids.to(run.device), mask.to(run.device)
        vision, text = encode_for_maps(model, images, ids, mask)
        words = word_token_mask(ids, mask, special)
        masks = np.stack([r["mask"] for r in part])
        tolerant = np.stack([r["tolerant_mask"] for r in part])
        sums.setdefault("area", []).append(masks.reshape(len(part), -1).mean(axis=1))
        sums.setdefault("tolerant_area", []).append(tolerant.reshape(len(part), -1).mean(axis=1))
        for method in methods:
            maps = batch_relevance(run.task, model, vision, text, words, method).question_maps
            hit, energy = pointing_and_energy(maps, masks)
            sums.setdefault(f"{method}/pointing", []).append(hit)
            sums.setdefault(f"{method}/energy", []).append(energy)
            sums.setdefault(f"{method}/pointing_tolerant", []).append(pointing_and_energy(maps, tolerant)[0])
            if deletion and method == "gradcam":
                answers = [r["answers"] for r in part]
                cells = maps.flatten(1)
                k = max(1, round(DELETED_SHARE * cells.shape[1]))
                top = cells.argsort(dim=1, descending=True)[:, :k]
                rand = torch.rand(cells.shape, generator=generator).argsort(dim=1)[:, :k].to(cells.device)
                sums.setdefault("accuracy", []).append(vqa_scores(run.task, model, vision, text, answers))
                top_scores = vqa_scores(run.task, model, masked_vision(vision, top), text, answers)
                sums.setdefault("accuracy_top_deleted", []).append(top_scores)
                rand_scores = vqa_scores(run.task, model, masked_vision(vision, rand), text, answers)
                sums.setdefault("accuracy_random_deleted", []).append(rand_scores)
    return {key: float(np.concatenate(values).mean()) for key, values in sums.items()}


def world_root(cfg) -> Path:
    """The shapes world the checkpoint was trained on (generated if it is not in the cache)."""
    from cmvl.data.sources.shapes import ShapesSource

    accepted = inspect.signature(ShapesSource).parameters
    settings = {k: v for k, v in dict(cfg.dataset).items() if k in accepted}
    settings["num_images"] = dict(settings.get("num_images") or {}) or None
    return ShapesSource(**settings).root


def randomised_model(run, seed: int):
    """A model of the run's config with fresh initial weights (Adebayo et al.'s full model randomisation)."""
    from cmvl.training.build import build_model

    torch.manual_seed(seed)
    return build_model(run.config, run.task, run.tokenizer).to(run.device).eval()


def main(argv: list[str]) -> dict:
    options = {"ckpt": None, "limit": "0", "out": "", "seed": "0", "device": "cpu", "split": "val"}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in options:
            sys.exit(f"bench_explain: unknown key {key} (keys: {', '.join(options)})")
        options[key] = value
    if not options["ckpt"]:
        sys.exit("bench_explain: give ckpt=PATH (a VQA checkpoint trained on dataset=shapes)")
    from cmvl.run import load_run

    run = load_run(options["ckpt"], device=options["device"])
    seed = int(options["seed"])
    rows = read_questions(world_root(run.config), options["split"], int(options["limit"]) or None)
    methods = ["attention", "gradcam"] + (["rollout"] if _single_stream(run) else [])
    started = time.perf_counter()
    trained = measure(run, run.model, rows, methods, deletion=True, seed=seed)
    randomised = measure(run, randomised_model(run, seed), rows, ["gradcam"], deletion=False, seed=seed)
    area = trained["area"]
    result = {
        "checkpoint": str(options["ckpt"]),
        "global_step": run.checkpoint.global_step,
        "questions": len(rows),
        "area_baseline": area,
        "trained": trained,
        "randomised": randomised,
        "ratios": {
            "gradcam_pointing/area": trained["gradcam/pointing"] / area,
            "gradcam_pointing/randomised": trained["gradcam/pointing"] / max(randomised["gradcam/pointing"], 1e-12),
            "deletion_top/random": (trained["accuracy"] - trained["accuracy_top_deleted"])
            / max(trained["accuracy"] - trained["accuracy_random_deleted"], 1e-12),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    _print(result, methods)
    if options["out"]:
        Path(options["out"]).write_text(json.dumps(result, indent=1))
    return result


def _single_stream(run) -> bool:
    fusion = run.model.fusion
    fusion.record_attention = True
    try:
        from cmvl.inference.inputs import run_texts

        ids, mask = run_texts(run, ["a"])
        size = int(run.config.data.image.size)
        images = torch.zeros((1, 3, size, size), dtype=torch.uint8, device=run.device)
        with torch.no_grad():
            fusion(*run.model.encode(images, ids.to(run.device), mask.to(run.device)))
        recorded = RecordedAttention.of(fusion.attention_maps())
    finally:
        fusion.record_attention = False
    return recorded is not None and recorded.layout.single_stream


def _print(result: dict, methods: list[str]) -> None:
    trained, randomised, area = result["trained"], result["randomised"], result["area_baseline"]
    print(f"{result['questions']} questions, checkpoint step {result['global_step']}; box-area baseline {area:.3f}")
    print(f"{'maps':<22}{'pointing':>10}{'energy':>10}{'pointing ±' + format(TOLERANCE_SHARE, '.1%'):>18}")
    print(f"{'box-area baseline':<22}{area:>10.3f}{area:>10.3f}{trained['tolerant_area']:>18.3f}")
    for name, scores, method in [*((m, trained, m) for m in methods), ("gradcam, randomised", randomised, "gradcam")]:
        row = (scores[f"{method}/{k}"] for k in ("pointing", "energy", "pointing_tolerant"))
        print(f"{name:<22}" + "".join(f"{v:>{w}.3f}" for v, w in zip(row, (10, 10, 18))))
    print(
        f"VQA accuracy {trained['accuracy']:.3f}; top 20% cells deleted {trained['accuracy_top_deleted']:.3f}, "
        f"random 20% {trained['accuracy_random_deleted']:.3f}"
    )
    for key, value in result["ratios"].items():
        print(f"{key} = {value:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Does a text-to-image run draw what its prompt asks? Judged GenEval-style on the shapes world by cmvl's own models
trained on real images (no downloaded weights).

    .venv/bin/python scripts/judge_generation.py ckpt=GEN.ckpt judge=DETECTOR.ckpt [retrieval=RETRIEVAL.ckpt] \\
        [n=4] [seed=0] [threshold=auto] [split=val] [limit=0] [out=report.json]

- `judge=`: a `task=detection task.queries=phrases` checkpoint trained on the real shapes world (queries "red
  circle", …). An image's objects are the judge's grid tokens whose best query scores >= `threshold` (overlapping
  boxes, IoU > 0.5, merged by NMS), each with the colour and shape its best query names and its box centre.
  `threshold=auto` (the default) picks it on the real images of `split` with one or two objects (the scenes the
  prompts ask for): the grid value 0.05, 0.10, ..., 0.95 with the highest lowest per-attribute accuracy (ties: the
  middle one of the best).
- The judge's own accuracy on real images comes first, per attribute, measured on the world's other held-out split
  (test, or val when split=test: images the threshold was not chosen on), on its images of one or two objects (the
  scenes it judges; `all_images`: on every image, up to the world's 5 objects): each true object is matched to a
  found one (Hungarian on centre distance, within the object's half-extent); colour / shape: the matched object's
  colour / shape is right (unmatched: wrong); count: as many found objects as true ones; position: for every pair of
  true objects apart horizontally by more than 5% of the side (as the captions' relations), the matched objects are
  in the same left/right order. The judge counts only where each of these is >= 98% on one or two objects.
- The prompts: the first caption of every split image with one or two objects ("A red circle.", "A red circle and a
  blue square.", the objects listed left to right). `n` images per prompt from `seed`. Per image: single-object
  prompts: colour / shape / attribute (both) of the best-scored found object, count (exactly one found); two-object
  prompts: count (exactly two), binding (both asked colour-shape pairs found: a blue circle for "a red circle and a
  blue square" fails), position (bound, and the first asked object left of the second).
- FD-judge: torchmetrics' FrechetInceptionDistance with the judge's vision encoder (its mean grid token) as the
  feature module, against the prompts' own real images (named FD-judge: it is not Inception's FID); the real row's
  FD-judge is that of as many one- or two-object images of the world's other held-out split (test, or val).
- Image-text agreement (with `retrieval=`, a `task=retrieval` checkpoint of the same world): R@1 of the prompt
  among it and the prompts that differ from it in one attribute (one object's colour or shape), by the dual
  encoder's cosine similarity.
- Rows: the real images with their own captions (the ceiling), the run's generations, and generations from shuffled
  prompts scored against the original ones (the floor).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, nms

from cmvl.cli.args import Option, Spec, integer, parse, path, probability, wants_help
from cmvl.errors import UserError


def threshold_value(text: str) -> float | str:
    """An option type: `auto` or a probability."""
    return "auto" if text == "auto" else probability(text)


SPEC = Spec(
    "judge_generation",
    "Judges a task=generation run on the shapes world with a detector trained on real images (and a retrieval run).",
    (
        Option("ckpt", "the task=generation checkpoint to judge", path, metavar="PATH"),
        Option(
            "judge",
            "a task=detection task.queries=phrases checkpoint trained on the real shapes world",
            path,
            metavar="PATH",
        ),
        Option("retrieval", "a task=retrieval checkpoint of the same world (image-text agreement)", path, None, "PATH"),
        Option("n", "images generated per prompt", integer(1, 256), 4, "N"),
        Option("seed", "seed of the generations", integer(0, 2**63 - 1), 0, "S"),
        Option(
            "threshold",
            "judge score at which a grid token is an object (auto: chosen on the real images of split)",
            threshold_value,
            "auto",
            "P|auto",
        ),
        Option("split", "the real split whose images and captions are used", str, "val", "SPLIT"),
        Option("limit", "at most this many prompts (0 = all)", integer(0), 0, "N"),
        Option("out", "where to write the report (JSON, atomically)", path, None, "JSON"),
        Option(
            "grid",
            "also write a PNG: for the first `grid_rows` prompts of each kind, the real image, then the "
            "prompt's generations",
            path,
            None,
            "PNG",
        ),
        Option("grid_rows", "prompts per kind (one object, two objects) in the grid", integer(1, 32), 4, "N"),
    ),
)
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))
POSITION_MARGIN = 0.05  # share of the side two objects' centres must be apart to have a left/right order
NMS_IOU = 0.5
REQUIRED_JUDGE_ACCURACY = 0.98
BATCH = 128
Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # one image's per-token best score, query, xyxy box


@dataclass(frozen=True)
class Thing:
    """An object, true or found: its colour, shape and box centre (pixels); `r`: half-extent, `score`: judge's."""

    color: str
    shape: str
    cx: float
    cy: float
    r: float = 0.0
    score: float = 1.0


@dataclass
class RealImage:
    image_id: int
    file: Path
    objects: list[Thing]  # left to right
    caption: str  # its first caption


def listing(objects: list[tuple[str, str]]) -> str:
    """The shapes world's first caption of a scene of these (colour, shape) objects, listed left to right."""
    parts = [f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}" for color, shape in objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text.capitalize() + "."


def one_attribute_variants(objects: list[tuple[str, str]], colors: list[str], shapes: list[str]) -> list[str]:
    """The prompts that differ from `listing(objects)` in one object's colour or shape."""
    variants = []
    for k, (color, shape) in enumerate(objects):
        for other in colors:
            if other != color:
                variants.append(listing([*objects[:k], (other, shape), *objects[k + 1 :]]))
        for other in shapes:
            if other != shape:
                variants.append(listing([*objects[:k], (color, other), *objects[k + 1 :]]))
    return list(dict.fromkeys(v for v in variants if v != listing(objects)))


# -- the real world ---------------------------------------------------------------------------------------------
def read_real_split(root: Path, split: str) -> list[RealImage]:
    """Every image of `split` with its objects (left to right) and its first caption."""
    try:
        instances = json.loads((root / "annotations" / f"instances_{split}.json").read_text(encoding="utf-8"))
        captions = json.loads((root / "annotations" / f"captions_{split}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"judge_generation: split={split}: no shapes annotations under {root} ({err})") from None
    names = {c["id"]: c["name"] for c in instances["categories"]}
    objects: dict[int, list[Thing]] = {im["id"]: [] for im in instances["images"]}
    for a in instances["annotations"]:
        x, y, w, h = a["bbox"]
        objects[a["image_id"]].append(Thing(a["attributes"][0], names[a["category_id"]], x + w / 2, y + h / 2, w / 2))
    first: dict[int, tuple[int, str]] = {}
    for c in captions["annotations"]:
        if c["image_id"] not in first or c["id"] < first[c["image_id"]][0]:
            first[c["image_id"]] = (c["id"], c["caption"])
    return [
        RealImage(
            im["id"], root / split / im["file_name"], sorted(objects[im["id"]], key=lambda o: o.cx), first[im["id"]][1]
        )
        for im in instances["images"]
    ]


def load_pixels(files: list[Path], size: int) -> torch.Tensor:
    from PIL import Image

    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# -- the judge ----------------------------------------------------------------------------------------------------
class Judge:
    """A phrase detector restored from its checkpoint: `find(images)` lists each image's objects."""

    def __init__(self, run, threshold: float = 0.5) -> None:
        from cmvl.inference.inputs import run_texts
        from cmvl.tasks.detection import DetectionTask

        if not isinstance(run.task, DetectionTask) or run.task.query_source != "phrases":
            raise UserError(
                f"judge_generation: judge={run.checkpoint.path} is not a task=detection task.queries=phrases "
                "checkpoint (train one: cmvl train task=detection task.queries=phrases)"
            )
        from cmvl.batch import TextQueries

        pairs = [q.split() for q in run.task.queries]
        if any(len(p) != 2 for p in pairs):
            raise UserError(f"judge_generation: judge={run.checkpoint.path}: its queries are not 'colour shape'")
        self.run, self.threshold, self.pairs = run, threshold, [tuple(p) for p in pairs]
        self.size = int(run.config.data.image.size)
        self.queries = TextQueries(list(run.task.queries), *run_texts(run, run.task.queries))
        self.colors = sorted({c for c, _ in self.pairs})
        self.shapes = sorted({s for _, s in self.pairs})

    def fit_size(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images resized (bilinear) to the judge's side."""
        if images.shape[-1] == self.size:
            return images
        resized = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", antialias=True)
        return resized.round().clamp(0, 255).to(torch.uint8)

    @torch.inference_mode()
    def detect(self, images: torch.Tensor) -> list[Detections]:
        """Per image, every grid token's best query score, that query and its xyxy box (pixels): the judge's
        output before any threshold."""
        detected = []
        model, task = self.run.model, self.run.task
        for start in range(0, len(images), BATCH):
            chunk = self.fit_size(images[start : start + BATCH]).to(self.run.device)
            index = torch.arange(len(chunk), device=chunk.device)
            out = model.detect(
                chunk, index, self.queries.to(self.run.device), head=model.heads[task.name], condition=task.condition
            )
            scores, query = torch.sigmoid(out.logits.float()).max(dim=-1)  # B×N
            boxes = box_convert(out.boxes.float().clamp(0, 1), "cxcywh", "xyxy") * self.size
            detected += [(scores[row].cpu(), query[row].cpu(), boxes[row].cpu()) for row in range(len(chunk))]
        return detected

    def things(self, detected: list[Detections], threshold: float) -> list[list[Thing]]:
        """Each image's objects: the tokens scoring >= `threshold`, overlaps merged by NMS."""
        found = []
        for scores, query, boxes in detected:
            keep = (scores >= threshold).nonzero().flatten()
            keep = keep[nms(boxes[keep], scores[keep], NMS_IOU)]
            things = []
            for k in keep.tolist():
                x0, y0, x1, y1 = boxes[k].tolist()
                color, shape = self.pairs[int(query[k])]
                things.append(Thing(color, shape, (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, float(scores[k])))
            found.append(things)
        return found

    def find(self, images: torch.Tensor) -> list[list[Thing]]:
        return self.things(self.detect(images), self.threshold)


class JudgeFeatures(nn.Module):
    """The judge's vision encoder as FrechetInceptionDistance's feature module: uint8 images → mean grid token."""

    def __init__(self, judge: Judge) -> None:
        super().__init__()
        self.judge = judge
        self.num_features = int(self(torch.zeros(1, 3, judge.size, judge.size, dtype=torch.uint8)).shape[-1])

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.judge.run.model.encode_images(self.judge.fit_size(images).to(self.judge.run.device))
        return tokens.grid_tokens().pooled_mean().double().cpu()


def fd_judge(features: JudgeFeatures, real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=features, normalize=False)
    for start in range(0, len(real), BATCH):
        metric.update(real[start : start + BATCH], real=True)
    for start in range(0, len(fake), BATCH):
        metric.update(fake[start : start + BATCH], real=False)
    return float(metric.compute())


# -- scoring -------------------------------------------------------------------------------------------------------
def match(truth: list[Thing], found: list[Thing]) -> dict[int, int]:
    """true object → found object: Hungarian on centre distance, pairs farther apart than the true half-extent
    dropped."""
    if not truth or not found:
        return {}
    cost = np.array([[math.hypot(t.cx - f.cx, t.cy - f.cy) for f in found] for t in truth])
    rows, cols = linear_sum_assignment(cost)
    return {int(r): int(c) for r, c in zip(rows, cols) if cost[r, c] <= max(truth[r].r, 1.0)}


def judge_accuracy(images: list[RealImage], found: list[list[Thing]], side: int) -> dict[str, float]:
    """The judge's per-attribute accuracy on real images (see the module docstring)."""
    color = shape = objects = count = pairs = ordered = 0
    for image, things in zip(images, found, strict=True):
        matched = match(image.objects, things)
        count += len(things) == len(image.objects)
        for k, truth in enumerate(image.objects):
            objects += 1
            color += k in matched and things[matched[k]].color == truth.color
            shape += k in matched and things[matched[k]].shape == truth.shape
        for i, a in enumerate(image.objects):
            for j, b in enumerate(image.objects):
                if a.cx + POSITION_MARGIN * side < b.cx:
                    pairs += 1
                    ordered += i in matched and j in matched and things[matched[i]].cx < things[matched[j]].cx
    return {
        "color": color / max(objects, 1),
        "shape": shape / max(objects, 1),
        "count": count / max(len(images), 1),
        "position": ordered / max(pairs, 1),
        "images": len(images),
        "objects": objects,
        "pairs": pairs,
    }


def lowest_accuracy(accuracy: dict[str, float]) -> float:
    """The lowest of colour, shape, count and position (position only where some pair of objects had an order)."""
    return min(
        accuracy[key] for key in ("color", "shape", "count", "position") if key != "position" or accuracy["pairs"]
    )


def choose_threshold(images: list[RealImage], detected: list[Detections], judge: Judge) -> float:
    """The grid threshold whose lowest per-attribute accuracy on these real images is highest (ties: the middle
    one of the best, away from both edges of the plateau)."""
    lowest = [lowest_accuracy(judge_accuracy(images, judge.things(detected, t), judge.size)) for t in THRESHOLD_GRID]
    best = [t for t, value in zip(THRESHOLD_GRID, lowest, strict=True) if value == max(lowest)]
    return best[len(best) // 2]


def one_or_two(images: list[RealImage]) -> list[int]:
    """Indices of the scenes of one or two objects: those the prompts are drawn from."""
    return [k for k, im in enumerate(images) if len(im.objects) in (1, 2)]


def judge_on_real(judge: Judge, split: str) -> dict:
    """The judge's accuracy on the real images of `split` (see the module docstring)."""
    images = read_real_split(world_root(judge.run), split)
    found = judge.find(load_pixels([im.file for im in images], judge.size))
    kept = one_or_two(images)
    judged = judge_accuracy([images[k] for k in kept], [found[k] for k in kept], judge.size)
    judged["counts"] = lowest_accuracy(judged) >= REQUIRED_JUDGE_ACCURACY
    judged["split"] = split
    judged["all_images"] = judge_accuracy(images, found, judge.size)
    return judged


def prompt_scores(asked: list[tuple[str, str]], things: list[Thing]) -> dict[str, bool]:
    """One image's GenEval-style scores against the (colour, shape) objects its prompt lists left to right."""
    if len(asked) == 1:
        best = max(things, key=lambda t: t.score, default=None)
        color = best is not None and best.color == asked[0][0]
        shape = best is not None and best.shape == asked[0][1]
        return {"color": color, "shape": shape, "attribute": color and shape, "count_single": len(things) == 1}
    pool = list(things)
    chosen = []
    for pair in asked:  # the best-scored found object of each asked pair, each used once
        candidates = [t for t in pool if (t.color, t.shape) == pair]
        if candidates:
            pick = max(candidates, key=lambda t: t.score)
            pool.remove(pick)
            chosen.append(pick)
    bound = len(chosen) == len(asked)
    return {"binding": bound, "position": bound and chosen[0].cx < chosen[1].cx, "count_two": len(things) == 2}


def summarise(asked: list[list[tuple[str, str]]], found: list[list[Thing]]) -> dict[str, float]:
    sums: dict[str, list[bool]] = {}
    for pairs, things in zip(asked, found, strict=True):
        for key, ok in prompt_scores(pairs, things).items():
            sums.setdefault(key, []).append(ok)
    return {key: float(np.mean(values)) for key, values in sums.items()}


def agreement(retrieval, images: torch.Tensor, asked: list[list[tuple[str, str]]], judge: Judge) -> float:
    """R@1 of each image's prompt among the prompts one attribute away (ties count against the prompt)."""
    from cmvl.inference.inputs import run_texts

    run = retrieval.run
    size = int(run.config.data.image.size)
    pixels = (
        images
        if images.shape[-1] == size
        else F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True).round().to(torch.uint8)
    )
    hits = 0
    for start in range(0, len(images), BATCH):
        _, image_emb = retrieval.encode_images(pixels[start : start + BATCH])
        for row, pairs in enumerate(asked[start : start + BATCH]):
            texts = [listing(pairs), *one_attribute_variants(pairs, judge.colors, judge.shapes)]
            _, text_emb = retrieval.encode_texts(*run_texts(run, texts))
            similarity = text_emb @ image_emb[row]
            hits += bool((similarity[0] > similarity[1:]).all())
    return hits / max(len(images), 1)


# -- the report ----------------------------------------------------------------------------------------------------
def generate(run, prompts: list[str], n: int, seed: int) -> torch.Tensor:
    from cmvl.tasks.generation import generate_images

    drawn = generate_images(
        run.model, run.tokenizer, prompts, n=n, seed=seed, max_length=int(run.config.text.max_length)
    )
    return torch.cat(drawn)


def world_root(run) -> Path:
    """The shapes world the judge was trained on (its run config's dataset)."""
    from cmvl.config.instantiate import instantiate
    from cmvl.data.sources.shapes import ShapesSource

    if not str(run.config.dataset.get("_target_", "")).endswith("ShapesSource"):
        raise UserError(f"judge_generation: judge={run.checkpoint.path} was not trained on dataset=shapes")
    source = instantiate(run.config.dataset)
    assert isinstance(source, ShapesSource)
    return source.root


def judge_generation(args: dict) -> dict:
    import cmvl
    from cmvl.inference.index import retrieval_model
    from cmvl.tasks.generation import GenerationTask

    generator = cmvl.load_run(args["ckpt"])
    if not isinstance(generator.task, GenerationTask):
        raise UserError(
            f"judge_generation: ckpt={args['ckpt']} is a task={generator.task.name} checkpoint; "
            "give a task=generation one"
        )
    judge = Judge(cmvl.load_run(args["judge"]))
    retrieval = retrieval_model(cmvl.load_run(args["retrieval"])) if args["retrieval"] else None
    real = read_real_split(world_root(judge.run), args["split"])
    real_pixels = load_pixels([im.file for im in real], judge.size)
    chosen = one_or_two(real)
    judge.threshold = args["threshold"]
    if judge.threshold == "auto":
        judge.threshold = choose_threshold([real[k] for k in chosen], judge.detect(real_pixels[chosen]), judge)
    other_split = "test" if args["split"] != "test" else "val"
    judged = judge_on_real(judge, other_split)

    chosen = chosen[: args["limit"]] if args["limit"] else chosen
    prompts = [real[k].caption for k in chosen]
    asked = [[(o.color, o.shape) for o in real[k].objects] for k in chosen]
    n = args["n"]
    generated = generate(generator, prompts, n, args["seed"])
    shuffled_order = np.random.default_rng(args["seed"]).permutation(len(prompts))
    shuffled = generate(generator, [prompts[k] for k in shuffled_order], n, args["seed"])
    repeated = [pairs for pairs in asked for _ in range(n)]  # each prompt's objects, once per image
    if args["grid"] is not None:
        single = [k for k, pairs in enumerate(asked) if len(pairs) == 1][: args["grid_rows"]]
        double = [k for k, pairs in enumerate(asked) if len(pairs) == 2][: args["grid_rows"]]
        picked = single + double
        write_grid(
            args["grid"],
            [prompts[k] for k in picked],
            [real_pixels[chosen[k]] for k in picked],
            [generated[k * n : (k + 1) * n] for k in picked],
        )
    features = JudgeFeatures(judge)
    rows = {}
    sources = {
        "real images (ceiling)": (judge.fit_size(real_pixels[chosen]), asked),
        "generated": (generated, repeated),
        "shuffled prompts (floor)": (shuffled, repeated),
    }
    # FD-judge's reference: the prompts' own real images; the ceiling's FD-judge is that of other real images of
    # one or two objects (the world's other held-out split), an independent sample of the same scenes.
    reference = real_pixels[chosen]
    others = [im for im in read_real_split(world_root(judge.run), other_split) if len(im.objects) in (1, 2)]
    other_pixels = load_pixels([im.file for im in others[: len(chosen)]], judge.size)
    for name, (images, pairs) in sources.items():
        row = summarise(pairs, judge.find(images))
        compared = other_pixels if name.startswith("real") else judge.fit_size(images)
        row["fd_judge"] = fd_judge(features, reference, compared)
        if retrieval is not None:
            row["r_at_1_one_attribute"] = agreement(retrieval, images, pairs, judge)
        row["images"] = len(images)
        rows[name] = row
    return {
        "judge_on_real": judged,
        "rows": rows,
        "prompts": len(prompts),
        "n": n,
        "seed": args["seed"],
        "threshold": judge.threshold,
        "threshold_chosen_on": args["split"] if args["threshold"] == "auto" else None,
        "split": args["split"],
        "ckpt": str(args["ckpt"]),
        "judge": str(args["judge"]),
        "retrieval": str(args["retrieval"]) if args["retrieval"] else None,
    }


GRID_CELL = 64  # pixels per image side in the grid (nearest-neighbour upscaling)


def write_grid(out: Path, prompts: list[str], real: list[torch.Tensor], drawn: list[torch.Tensor]) -> None:
    """One row per prompt, under it: its real image (framed in green), then its generations; written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    from cmvl.atomic_file import atomic_write

    label, gap = 14, 6
    columns = 1 + len(drawn[0])
    canvas = Image.new("RGB", (columns * GRID_CELL + gap, len(prompts) * (GRID_CELL + label)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=11)

    def paste(image: torch.Tensor, x: int, y: int) -> None:
        picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((GRID_CELL, GRID_CELL), Image.NEAREST)
        canvas.paste(picture, (x, y))

    for row, (prompt, image, images) in enumerate(zip(prompts, real, drawn, strict=True)):
        top = row * (GRID_CELL + label)
        draw.text((2, top + 1), prompt, fill="black", font=font)
        paste(image, 0, top + label)
        draw.rectangle((0, top + label, GRID_CELL - 1, top + label + GRID_CELL - 1), outline=(0, 160, 0))
        for k, picture in enumerate(images):
            paste(picture, gap + (k + 1) * GRID_CELL, top + label)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as f:
        canvas.save(f, format="PNG")


COLUMNS = [
    ("color", "colour"),
    ("shape", "shape"),
    ("attribute", "attribute (both)"),
    ("count_single", "count (1)"),
    ("binding", "binding (2)"),
    ("position", "position (2)"),
    ("count_two", "count (2)"),
    ("fd_judge", "FD-judge ↓"),
    ("r_at_1_one_attribute", "R@1 one-attribute"),
]


def markdown(report: dict) -> str:
    j, every = report["judge_on_real"], report["judge_on_real"]["all_images"]
    chosen = f"chosen on {report['threshold_chosen_on']}" if report["threshold_chosen_on"] else "given"
    lines = [
        f"judge threshold {report['threshold']:.2f} ({chosen}); on the {j['images']} real {j['split']} images of "
        f"one or two objects ({j['objects']} objects, {j['pairs']} ordered pairs): colour {j['color']:.3f}, shape "
        f"{j['shape']:.3f}, count {j['count']:.3f}, position {j['position']:.3f} "
        f"({'counts' if j['counts'] else 'below 0.98 somewhere: the judge does not count'}); on all "
        f"{every['images']}: colour {every['color']:.3f}, shape {every['shape']:.3f}, count {every['count']:.3f}, "
        f"position {every['position']:.3f}",
        "",
        "| images | " + " | ".join(name for key, name in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, row in report["rows"].items():
        cells = [f"{row[key]:.3f}" if key in row else "-" for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> dict | None:
    if wants_help(argv):
        print(SPEC.help())
        return None
    try:
        args = parse(SPEC, argv)
        if args["out"] is not None and (args["out"].suffix != ".json" or args["out"].is_dir()):
            raise UserError(f"judge_generation: out={args['out']}: must name a .json file")
        if args["grid"] is not None and (args["grid"].suffix.lower() != ".png" or args["grid"].is_dir()):
            raise UserError(f"judge_generation: grid={args['grid']}: must name a .png file")
        report = judge_generation(args)
    except UserError as err:
        print(f"judge_generation: error: {str(err).removeprefix('judge_generation: ')}", file=sys.stderr)
        sys.exit(2)
    print(markdown(report))
    if args["out"] is not None:
        from cmvl.atomic_file import write_json_atomic

        write_json_atomic(args["out"], report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

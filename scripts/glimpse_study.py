"""Where a VQA model on the shapes world looks, and how it does on spatial-relation questions.

    .venv/bin/python scripts/glimpse_study.py CKPT [CKPT ...] [--split val]

For each checkpoint: VQA accuracy (min(1, matching answers / 3)) on all questions of the split and on the
spatial-relation ones (the question names a relation of `cmvl.data.shapes.questions.RELATIONS`: left of, right of,
above, below); with `fusion=stn_glimpse`, the mean IoU of each glimpse box (`fusion.glimpse_boxes()`) with the box
around the objects the question names ("the red circle"), over the questions that name at least one object, and
the mean glimpse area (1.0 = the whole image, as at initialisation); `whole_image_iou` is the IoU the identity
glimpse (the whole image) would score on the same questions. Prints one line per checkpoint, JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import cmvl
from cmvl.data.shapes.questions import RELATIONS
from cmvl.metrics.vqa_normalize import normalize_answer
from cmvl.training.build import build_datamodule


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def named_objects_box(question: str, objects: dict) -> list[float] | None:
    """The box (image fractions) around the objects whose phrase ("red circle") the question names, or None."""
    text = question.lower()
    boxes = [box for phrase, box in zip(objects["phrases"], objects["boxes"]) if f"the {phrase.lower()}" in text]
    if not boxes:
        return None
    width, height = objects["width"], objects["height"]
    x0, y0 = min(b[0] for b in boxes) / width, min(b[1] for b in boxes) / height
    x1, y1 = max(b[0] + b[2] for b in boxes) / width, max(b[1] + b[3] for b in boxes) / height
    return [x0, y0, x1, y1]


@torch.no_grad()
def study(checkpoint: str, split: str) -> dict:
    run = cmvl.load_run(checkpoint)
    datamodule = build_datamodule(run.config, task=run.task, tokenizer=run.tokenizer)
    qa = {row["question_id"]: row for row in datamodule.table("qa", split).to_pylist()}
    objects = {row["image"]: row for row in datamodule.table("objects", split).to_pylist()}
    fusion = run.model.fusion
    scores, relation_scores, ious, areas, whole_image = [], [], [], [], []
    for batch in datamodule.eval_dataloaders(split)[run.task.name]:
        outputs = run.task.eval_forward(run.model, batch)
        boxes = fusion.glimpse_boxes().tolist() if hasattr(fusion, "glimpse_boxes") else None
        for i, prediction in enumerate(run.task.predictions(outputs, batch)):
            row = qa[prediction["question_id"]]
            answer = normalize_answer(prediction["answer"])
            score = min(1.0, sum(normalize_answer(a) == answer for a in row["answers"]) / 3)
            scores.append(score)
            if any(relation in row["question"].lower() for relation in RELATIONS):
                relation_scores.append(score)
            named = named_objects_box(row["question"], objects[row["image"]])
            if boxes is not None:
                areas += [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes[i]]
                if named is not None:
                    ious += [box_iou(b, named) for b in boxes[i]]
                    whole_image.append(box_iou([0.0, 0.0, 1.0, 1.0], named))
    result = {
        "checkpoint": checkpoint,
        "fusion": run.config.fusion._target_.rsplit(".", 1)[-1],
        "questions": len(scores),
        "accuracy": statistics.fmean(scores),
        "relation_questions": len(relation_scores),
        "relation_accuracy": statistics.fmean(relation_scores),
    }
    if ious:
        result.update(glimpse_iou=statistics.fmean(ious), glimpse_area=statistics.fmean(areas), iou_boxes=len(ious))
        result["whole_image_iou"] = statistics.fmean(whole_image)
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="val")
    args = parser.parse_args(argv)
    for checkpoint in args.checkpoints:
        print(json.dumps(study(checkpoint, args.split)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

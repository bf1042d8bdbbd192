"""cmvl's detection numbers are the official COCO evaluation's: the metric, fed through the detection task's targets
and decoding, equals pycocotools run directly on the ground-truth file and the results file (to 1e-6), on the real
COCO fixture annotations (80 categories, crowd regions, images without objects) and on the shapes world; its state
gathered from two processes gives the numbers of one."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cmvl.data.sources.coco import read_coco_instances
from cmvl.metrics.coco_detection import COCO_STATS, COCODetectionMetric
from cmvl.tasks.detection import DetectionTask
from tests.conftest import FIXTURES

REAL_INSTANCES = FIXTURES / "coco" / "annotations" / "instances_val2017.json"


def _official(gt_file: Path, results: list[dict], tmp_path: Path) -> dict[str, float]:
    """pycocotools on the files, the way its own demo runs it."""
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        evaluation = COCOeval(gt, gt.loadRes(str(results_file)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return dict(zip(COCO_STATS, evaluation.stats.tolist()))


def _detections(doc: dict, seed: int) -> list[dict]:
    """Noisy copies of most ground-truth boxes (some with the wrong category), and false positives."""
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in doc["categories"]]
    sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    out = []
    for ann in doc["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
        category = ann["category_id"] if rng.random() < 0.85 else int(rng.choice(category_ids))
        box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
        out.append({"image_id": ann["image_id"], "category_id": category, "bbox": box, "score": rng.random()})
    for image, (width, height) in sizes.items():
        for _ in range(int(rng.integers(0, 4))):
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            out.append(
                {"image_id": image, "category_id": int(rng.choice(category_ids)), "bbox": box, "score": rng.random()}
            )
    # Through float32, as the task's tensors hold them: the results file gets the very numbers the metric scores.
    for record in out:
        record["bbox"] = [float(v) for v in np.float32(record["bbox"])]
        record["score"] = float(np.float32(record["score"]))
    return out


def _update(metric: COCODetectionMetric, task: DetectionTask, table, rows: list[int], results: list[dict]) -> None:
    """The metric fed as the task feeds it: the split's targets collated for `rows`, and those rows' detections."""
    targets = task.targets(table).collate(rows)
    ids = torch.tensor(task.query_ids)
    mine = [r for r in results if r["image_id"] in set(targets.image_id.tolist())]
    metric.update(
        image_id=targets.image_id,
        image_size=targets.image_size,
        gt_image=targets.image_id[targets.object_row],
        gt_category=ids[targets.labels],
        gt_box=targets.pixel_boxes,
        gt_area=targets.area,
        gt_crowd=targets.crowd,
        det_image=torch.tensor([r["image_id"] for r in mine], dtype=torch.long),
        det_category=torch.tensor([r["category_id"] for r in mine], dtype=torch.long),
        det_box=torch.tensor([r["bbox"] for r in mine], dtype=torch.float32).reshape(-1, 4),
        det_score=torch.tensor([r["score"] for r in mine], dtype=torch.float32),
    )


def _cmvl(gt_file: Path, results: list[dict], *, halves: bool = False) -> dict[str, float]:
    table = read_coco_instances([(gt_file, "images")])
    task = DetectionTask()
    task.fit(table)
    rows = list(range(table.num_rows))
    if not halves:
        metric = task.make_metric()
        _update(metric, task, table, rows, results)
    else:  # two processes' states, gathered the way torchmetrics gathers them (concatenated, rank after rank)
        metric, other = task.make_metric(), task.make_metric()
        _update(metric, task, table, rows[: len(rows) // 2], results)
        _update(other, task, table, rows[len(rows) // 2 :], results)
        metric.merge_state(other)
    return {k: float(v) for k, v in metric.compute().items()}


def test_real_coco_annotations_give_pycocotools_numbers(tmp_path):
    doc = json.loads(REAL_INSTANCES.read_text())
    assert sum(a["iscrowd"] for a in doc["annotations"]) == 5  # crowd regions are in the sample
    results = _detections(doc, seed=0)
    official = _official(REAL_INSTANCES, results, tmp_path)
    ours = _cmvl(REAL_INSTANCES, results)
    assert 0.1 < official["AP50"] < 0.95 and official["AP_L"] > 0  # a result that tells numbers apart
    for name in COCO_STATS:
        assert ours[name] == pytest.approx(official[name], abs=1e-6), name


def test_shapes_annotations_give_pycocotools_numbers_and_no_detections_score_zero(tiny_world, tmp_path):
    gt_file = tiny_world / "annotations" / "instances_val.json"
    doc = json.loads(gt_file.read_text())
    results = _detections(doc, seed=1)
    official = _official(gt_file, results, tmp_path)
    ours = _cmvl(gt_file, results)
    for name in COCO_STATS:
        assert ours[name] == pytest.approx(official[name], abs=1e-6), name
    gathered = _cmvl(gt_file, results, halves=True)
    assert all(gathered[name] == pytest.approx(ours[name], abs=1e-12) for name in COCO_STATS)
    # 32 px images: every object is COCO-small (area < 32² pixels), so medium and large are undefined (-1).
    assert ours["AP_M"] == ours["AP_L"] == -1 and ours["AP_S"] == pytest.approx(ours["AP"])
    nothing = _cmvl(gt_file, [])
    assert nothing["AP"] == nothing["AP50"] == nothing["AR100"] == 0.0


def test_groups_score_their_categories_alone(tiny_world):
    gt_file = tiny_world / "annotations" / "instances_val.json"
    doc = json.loads(gt_file.read_text())
    results = _detections(doc, seed=2)
    table = read_coco_instances([(gt_file, "images")])
    task = DetectionTask()
    task.fit(table)
    metric = COCODetectionMetric(list(zip(task.query_ids, task.queries)), {"first": [1], "rest": [2, 3]})
    _update(metric, task, table, list(range(table.num_rows)), results)
    values = {k: float(v) for k, v in metric.compute().items()}
    only_first = COCODetectionMetric([(1, task.queries[0])])
    _update(only_first, task, table, list(range(table.num_rows)), [r for r in results if r["category_id"] == 1])
    alone = {k: float(v) for k, v in only_first.compute().items()}
    assert set(values) == set(metric.names)
    assert values["first_AP50"] == pytest.approx(alone["AP50"], abs=1e-12)
    assert values["first_AP50"] != values["rest_AP50"]

"""COCO's detection metrics, computed by the official evaluation (pycocotools `COCOeval`, iouType ``bbox``).

The metric keeps every image, ground-truth box and detection it is updated with as concatenated tensor states, so
torchmetrics gathers them from every process under DDP; `compute` hands the gathered lists to `COCOeval` exactly as a
ground-truth file and a results file would (the results go through `COCO.loadRes`, which gives each detection its box
area, as for a results file). The numbers are COCO's: AP averaged over IoU 0.50:0.95, AP at 0.5 and 0.75, AP of
small / medium / large objects (areas < 32², 32²–96², > 96² *pixels*, whatever the image size: −1 where a range has
no ground truth) and AR at 1, 10 and 100 detections per image.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

# COCOeval.stats, in its order.
COCO_STATS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")
_STATES = {
    "image_id": torch.long,  # U: every scored image, with or without objects
    "image_size": torch.float32,  # U×2: width, height in pixels
    "gt_image": torch.long,  # M: the image id of each ground-truth box
    "gt_category": torch.long,
    "gt_box": torch.float32,  # M×4: x, y, width, height in pixels
    "gt_area": torch.float32,
    "gt_crowd": torch.long,  # 1: a crowd region (COCO ignores the detections that match it)
    "det_image": torch.long,  # D: the image id of each detection
    "det_category": torch.long,
    "det_box": torch.float32,  # D×4: x, y, width, height in pixels
    "det_score": torch.float32,
}


def _quiet(call: Any, *args: Any) -> Any:
    """pycocotools prints its progress on stdout; cmvl's output stays cmvl's."""
    with contextlib.redirect_stdout(io.StringIO()):
        return call(*args)


def ground_truth_dataset(
    categories: Sequence[tuple[int, str]],
    images: Sequence[tuple[int, float, float]],
    boxes: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """A COCO instances document (what `instances_*.json` holds, for ``bbox`` evaluation): `images` as (id, width,
    height), `boxes` as annotation records without ids (they are numbered 1… as COCO's are)."""
    return {
        "images": [{"id": int(i), "width": float(w), "height": float(h)} for i, w, h in images],
        "categories": [{"id": int(c), "name": name} for c, name in categories],
        "annotations": [{**box, "id": k + 1} for k, box in enumerate(boxes)],
    }


def coco_eval_stats(
    ground_truth: COCO, results: list[dict[str, Any]], category_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """COCOeval's 12 ``bbox`` numbers for `results` (COCO results records) against `ground_truth`, over the
    categories `category_ids` (None: all of the ground truth's)."""
    if results:
        detections = _quiet(ground_truth.loadRes, results)
    else:  # loadRes refuses an empty list; no detections is a valid result (AP 0 where there are objects)
        detections = COCO()
        detections.dataset = {"images": ground_truth.dataset["images"], "annotations": []}
        _quiet(detections.createIndex)
    evaluation = COCOeval(ground_truth, detections, "bbox")
    if category_ids is not None:
        evaluation.params.catIds = sorted(int(c) for c in category_ids)
    _quiet(evaluation.evaluate)
    _quiet(evaluation.accumulate)
    _quiet(evaluation.summarize)
    return {name: float(value) for name, value in zip(COCO_STATS, evaluation.stats)}


class COCODetectionMetric(Metric):
    """COCO's AP / AR over everything updated, by `COCOeval`. `categories` are (id, name) pairs: the category ids
    the detections and boxes use. `groups` name subsets of the category ids scored on their own as well (e.g.
    `seen` and `heldout` queries): their numbers are logged as `<group>_<stat>`."""

    full_state_update = False

    def __init__(self, categories: Sequence[tuple[int, str]], groups: dict[str, Sequence[int]] | None = None) -> None:
        super().__init__()
        self.categories = [(int(c), str(name)) for c, name in categories]
        self.groups = {name: [int(c) for c in ids] for name, ids in (groups or {}).items()}
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    @property
    def names(self) -> list[str]:
        return [*COCO_STATS, *(f"{group}_{stat}" for group in self.groups for stat in COCO_STATS)]

    def update(
        self,
        *,
        image_id: torch.Tensor,
        image_size: torch.Tensor,
        gt_image: torch.Tensor,
        gt_category: torch.Tensor,
        gt_box: torch.Tensor,
        gt_area: torch.Tensor,
        gt_crowd: torch.Tensor,
        det_image: torch.Tensor,
        det_category: torch.Tensor,
        det_box: torch.Tensor,
        det_score: torch.Tensor,
    ) -> None:
        """Images (ids U, sizes U×2), their ground-truth boxes and the detections; boxes are pixel xywh."""
        values = locals()
        for name, dtype in _STATES.items():
            value = values[name].detach()
            getattr(self, name).append(value.to(dtype).reshape(-1, *value.shape[1:]))

    def _gathered(self) -> dict[str, np.ndarray]:
        out = {}
        for name in _STATES:
            state = getattr(self, name)
            empty = isinstance(state, list) and not state
            value = torch.zeros(0) if empty else dim_zero_cat(state)
            out[name] = value.cpu().double().numpy() if value.is_floating_point() else value.cpu().numpy()
        return out

    def compute(self) -> dict[str, torch.Tensor]:
        s = self._gathered()
        # Each image is scored once, by one process (cmvl's evaluation sampler pads no shard).
        images, first = np.unique(s["image_id"], return_index=True)
        sizes = s["image_size"].reshape(-1, 2)[first]
        boxes = [
            {
                "image_id": int(image),
                "category_id": int(category),
                "bbox": [float(v) for v in box],
                "area": float(area),
                "iscrowd": int(crowd),
            }
            for image, category, box, area, crowd in zip(
                s["gt_image"], s["gt_category"], s["gt_box"].reshape(-1, 4), s["gt_area"], s["gt_crowd"]
            )
        ]
        ground_truth = COCO()
        ground_truth.dataset = ground_truth_dataset(
            self.categories, [(i, w, h) for i, (w, h) in zip(images, sizes)], boxes
        )
        _quiet(ground_truth.createIndex)
        results = [
            {"image_id": int(image), "category_id": int(category), "bbox": [float(v) for v in box], "score": float(p)}
            for image, category, box, p in zip(
                s["det_image"], s["det_category"], s["det_box"].reshape(-1, 4), s["det_score"]
            )
        ]
        values = coco_eval_stats(ground_truth, results)
        for group, ids in self.groups.items():
            stats = coco_eval_stats(ground_truth, results, ids)
            values.update({f"{group}_{stat}": value for stat, value in stats.items()})
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in values.items()}

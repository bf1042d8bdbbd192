"""Object detection, closed-set or open-vocabulary: boxes and labels from text queries (COCO instances, Visual Genome
objects, shapes), scored by the official COCO evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss
from transformers import PreTrainedTokenizerFast

from cmvl.batch import Batch, TensorRecord
from cmvl.columns import list_column, schema_json
from cmvl.errors import ConfigError, DataError
from cmvl.metrics.coco_detection import COCODetectionMetric
from cmvl.models.families.detector import CONDITIONS, DetectionHead, Detections, DetectorModel
from cmvl.tasks.base import PREDICTED, TRUE, SampleNote, SplitTargets, Task
from cmvl.tasks.prediction import Detection, DetectionsResult, PredictOptions, PredictTargets

QUERY_SOURCES = ("categories", "phrases")  # the queries: the dataset's category names, or its objects' phrases
SAMPLE_BOXES = 5  # at most this many predicted boxes per sample picture


@dataclass
class DetectionTargetsBatch(TensorRecord):
    """The B images' ground truth as M (object, query) pairs: an object is a target of every query that names it
    (its category or its phrase)."""

    image_id: torch.Tensor  # B int64
    image_size: torch.Tensor  # B×2 float32: width, height in pixels
    object_row: torch.Tensor  # M int64: the batch row of each target
    labels: torch.Tensor  # M int64: the query it answers
    boxes: torch.Tensor  # M×4 float32: cx, cy, w, h as fractions of the image size
    pixel_boxes: torch.Tensor  # M×4 float32: x, y, w, h in pixels, as annotated
    area: torch.Tensor  # M float32: the object's area in pixels as annotated (COCO's small / medium / large)
    crowd: torch.Tensor  # M bool: a crowd region (not matched in training; COCO's evaluation ignores it)


@dataclass
class DetectionTargets(SplitTargets):
    image_id: np.ndarray  # int64 [N]
    size: np.ndarray  # float32 [N, 2]
    offsets: np.ndarray  # int64 [N+1]: image i's targets are [offsets[i], offsets[i+1])
    labels: np.ndarray  # int64 [M]
    boxes: np.ndarray  # float32 [M, 4] cxcywh in [0, 1]
    pixel_boxes: np.ndarray  # float32 [M, 4] xywh pixels
    area: np.ndarray  # float32 [M]
    crowd: np.ndarray  # bool [M]
    annotated: bool = True

    def collate(self, indices: list[int]) -> DetectionTargetsBatch:
        idx = np.asarray(indices, dtype=np.int64)
        spans = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]
        rows = np.concatenate([np.full(len(s), row) for row, s in enumerate(spans)] + [np.zeros(0)]).astype(np.int64)
        take = np.concatenate([*spans, np.zeros(0, dtype=np.int64)]).astype(np.int64)
        return DetectionTargetsBatch(
            image_id=torch.from_numpy(self.image_id[idx]),
            image_size=torch.from_numpy(self.size[idx]),
            object_row=torch.from_numpy(rows),
            labels=torch.from_numpy(self.labels[take]),
            boxes=torch.from_numpy(self.boxes[take].reshape(-1, 4)),
            pixel_boxes=torch.from_numpy(self.pixel_boxes[take].reshape(-1, 4)),
            area=torch.from_numpy(self.area[take]),
            crowd=torch.from_numpy(self.crowd[take]),
        )


@dataclass
class DecodedDetections:
    """The `max_detections` best (token, query) pairs of each image, in pixels."""

    row: torch.Tensor  # D int64: batch row
    query: torch.Tensor  # D int64
    xywh: torch.Tensor  # D×4 float32 pixels
    xyxy_unit: torch.Tensor  # D×4 float32 in [0, 1] of the image (pictures)
    score: torch.Tensor  # D float32


def _query_list(queries: Any) -> list[str]:
    """The texts of `task.queries=[...]`, or one line saying why they are none."""
    texts = [str(q).strip() for q in queries]
    if not texts or not all(texts):
        raise ConfigError(f"task.queries={list(queries)}: give non-empty texts (task.queries=[red circle,square])")
    repeated = next((q for k, q in enumerate(texts) if q in texts[:k]), None)
    if repeated is not None:
        raise ConfigError(f"task.queries: {repeated!r} is given twice")
    return texts


def _boxes_column(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("boxes").combine_chunks().flatten().flatten(), dtype=np.float32).reshape(-1, 4)


class DetectionTask(Task):
    """Detects the objects that text queries name: `queries=categories` is closed-set detection over the dataset's
    categories; `queries=phrases` uses each object's phrase (shapes: "red circle"). `heldout_queries` are left out
    of training (no loss on them) and scored apart at evaluation (`heldout_AP50`, beside `seen_AP50`): the
    open-vocabulary measure. At evaluation, `queries=[red circle, square]` (a list) scores a trained checkpoint on
    those texts instead of its own (each names the objects whose category or phrase it is); the ones it never
    trained on are scored apart as `heldout_*`, the others as `seen_*`. Training: Hungarian matching of grid-token
    detections to the targets on focal + L1 + GIoU costs (DETR / OWL-ViT), the same terms as the loss."""

    name = "detection"
    table_kind = "objects"
    epochs = 6  # default budget (trainer.max_epochs=null), measured in the README
    allows_random_crop = False
    families = (DetectorModel,)

    def __init__(
        self,
        *,
        queries: str | list[str] = "categories",
        heldout_queries: list[str] | None = None,
        condition: str = "none",
        class_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        max_detections: int = 100,
        sample_threshold: float = 0.3,
        head_hidden_mult: int = 2,
        dropout: float = 0.0,
    ) -> None:
        self.eval_queries = None if isinstance(queries, str) else _query_list(queries)
        if self.eval_queries is None and queries not in QUERY_SOURCES:
            raise ConfigError(
                f"task.queries={queries}: choose one of {', '.join(QUERY_SOURCES)} (or, at cmvl eval, a list of texts)"
            )
        if condition not in CONDITIONS:
            raise ConfigError(f"task.condition={condition}: choose one of {', '.join(CONDITIONS)}")
        if max_detections < 1:
            raise ConfigError(f"task.max_detections={max_detections}: must be at least 1")
        self.query_source = "phrases" if self.eval_queries is not None else queries  # free texts are named in results
        self.condition = condition
        self.heldout = [str(q).strip() for q in heldout_queries or []]
        self.class_weight, self.l1_weight, self.giou_weight = class_weight, l1_weight, giou_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.max_detections, self.sample_threshold = max_detections, sample_threshold
        self.head_hidden_mult, self.dropout = head_hidden_mult, dropout
        self.parts = frozenset({"vision", "text", "fusion"} if condition == "fusion" else {"vision", "text"})
        self.monitor_key = "seen_AP50" if self.heldout else "AP50"
        self.categories: list[str] = []
        self.queries: list[str] = []
        self.query_ids: list[int] = []  # the results' category_id of each query

    # -- what the task learns from the data -------------------------------------------------------------------
    def fit(self, train_table: pa.Table) -> None:
        if self.eval_queries is not None:
            raise ConfigError(
                "task.queries=[...]: a list of texts evaluates a trained checkpoint on them (cmvl eval); train with "
                "task.queries=categories or phrases"
            )
        categories = schema_json(train_table, "categories")
        if categories is None:
            raise DataError("the objects table names no categories (schema metadata 'categories')")
        self.categories = json.loads(categories)
        if self.query_source == "categories":
            self.queries = list(self.categories)
            ids = schema_json(train_table, "category_ids")
            self.query_ids = json.loads(ids) if ids is not None else list(range(1, len(self.queries) + 1))
        else:
            _, phrases = list_column(train_table, "phrases")
            self.queries = sorted(set(phrases.astype(str).tolist()))
            self.query_ids = list(range(1, len(self.queries) + 1))
        if not self.queries:
            raise DataError(f"the objects table has no {self.query_source} to detect")
        self._check_heldout()

    def _check_heldout(self) -> None:
        unknown = [q for q in self.heldout if q not in self.queries]
        if unknown:
            shown = ", ".join(self.queries[:20]) + (" …" if len(self.queries) > 20 else "")
            raise ConfigError(
                f"task.heldout_queries: {', '.join(unknown)} is not one of the task.queries={self.query_source} "
                f"of the training split ({shown})"
            )
        if len(set(self.heldout)) == len(self.queries):
            raise ConfigError("task.heldout_queries holds every query: nothing is left to train on")

    def state_dict(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories),
            "queries": list(self.queries),
            "query_ids": list(self.query_ids),
            "query_source": self.query_source,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.categories, self.queries = list(state["categories"]), list(state["queries"])
        self.query_ids = [int(i) for i in state["query_ids"]]
        self._check_heldout()
        trained_source = state.get("query_source")  # absent in checkpoints written before it was saved
        if self.eval_queries is None and trained_source not in (None, self.query_source):
            raise ConfigError(
                f"task.queries={self.query_source}: this checkpoint was trained on task.queries={trained_source}; "
                f"to evaluate it on other texts give them as a list (task.queries=[red circle,square])"
            )
        if self.eval_queries is not None:  # the evaluated texts replace the checkpoint's; never-trained ones held out
            trained = {q for q, t in zip(self.queries, self.trained_queries) if t}
            self.queries, self.query_ids = list(self.eval_queries), list(range(1, len(self.eval_queries) + 1))
            self.heldout = [q for q in self.queries if q not in trained]

    def bind_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> None:
        """Refuses, in one line, an evaluated text (`queries=[...]`) the model cannot read: every token unknown."""
        unknown = tokenizer.unk_token_id
        for query in self.eval_queries or []:
            ids = tokenizer(query, add_special_tokens=False)["input_ids"]
            if not ids or (unknown is not None and all(i == unknown for i in ids)):
                raise ConfigError(f"task.queries: none of the words of {query!r} is in the model's vocabulary")

    @property
    def trained_queries(self) -> list[bool]:
        return [q not in self.heldout for q in self.queries]

    def texts(self, table: pa.Table) -> None:
        return None  # image-only samples; the queries travel once per batch (`batch.queries`)

    def query_texts(self) -> list[str]:
        return list(self.queries)

    def vocabulary_texts(self, table: pa.Table) -> list[str]:
        # Held-out queries teach the tokenizer nothing: their words are known only where trained queries use them.
        return [q for q, trained in zip(self.queries, self.trained_queries) if trained]

    def targets(self, table: pa.Table) -> DetectionTargets:
        offsets, labels = list_column(table, "labels")
        _, phrases = list_column(table, "phrases")
        _, crowd = list_column(table, "iscrowd")
        _, area = list_column(table, "area")
        boxes = _boxes_column(table)
        size = np.stack([table.column(k).to_numpy() for k in ("width", "height")], axis=1).astype(np.float32)
        index = {q: i for i, q in enumerate(self.queries)}
        objects, answers = [], []  # (object, query) pairs: the object's category or phrase names the query
        for k, (label, phrase) in enumerate(zip(labels.tolist(), phrases.astype(str).tolist())):
            for query in dict.fromkeys((self.categories[label], phrase)):
                if query in index:
                    objects.append(k)
                    answers.append(index[query])
        unscored = sorted(set(self.eval_queries or []) - {self.queries[a] for a in answers})
        if unscored:
            raise DataError(
                f"task.queries: {', '.join(map(repr, unscored))} names no object of this split (neither its "
                f"category nor its phrase): it cannot be scored"
            )
        objects_np = np.asarray(objects, dtype=np.int64)
        image_of_object = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        image_of_target = image_of_object[objects_np]
        target_offsets = np.searchsorted(image_of_target, np.arange(len(offsets)), side="left").astype(np.int64)
        xywh = boxes[objects_np]
        scale = np.concatenate([size, size], axis=1)[image_of_target]
        cxcywh = np.concatenate([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], axis=1) / np.maximum(scale, 1e-6)
        return DetectionTargets(
            image_id=table.column("image_id").to_numpy().astype(np.int64),
            size=size,
            offsets=target_offsets,
            labels=np.asarray(answers, dtype=np.int64),
            boxes=cxcywh.astype(np.float32).reshape(-1, 4),
            pixel_boxes=xywh.astype(np.float32).reshape(-1, 4),
            area=area.astype(np.float32)[objects_np],
            crowd=crowd.astype(bool)[objects_np],
        )

    # -- model ------------------------------------------------------------------------------------------------
    def build_head(self, dim: int) -> nn.Module:
        return DetectionHead(dim, self.head_hidden_mult * dim, self.dropout)

    def forward(self, model: DetectorModel, batch: Batch) -> Detections:
        if batch.queries is None:
            raise RuntimeError("a detection batch carries its queries (Task.query_texts)")
        head = model.heads[self.name]
        return model.detect(batch.images, batch.image_index, batch.queries, head=head, condition=self.condition)

    def _match(self, outputs: Detections, targets: DetectionTargetsBatch, keep: torch.Tensor) -> tuple[Any, Any]:
        """(target indices, token indices) of the Hungarian matching, image by image, on the loss's own terms
        (focal class cost as in Deformable DETR, L1 and −GIoU on the boxes)."""
        rows, labels, boxes = targets.object_row[keep], targets.labels[keep], targets.boxes[keep]
        with torch.no_grad():
            prob = torch.sigmoid(outputs.logits[rows, :, labels].float())  # T×N: each target's query, every token
            alpha, gamma = self.focal_alpha, self.focal_gamma
            positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
            negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
            predicted = outputs.boxes[rows].float()  # T×N×4: the tokens of each target's image
            l1 = (predicted - boxes.unsqueeze(1)).abs().sum(-1)
            giou = 1 - generalized_box_iou_loss(
                box_convert(predicted, "cxcywh", "xyxy").reshape(-1, 4),
                box_convert(boxes, "cxcywh", "xyxy").unsqueeze(1).expand_as(predicted).reshape(-1, 4),
                reduction="none",
            ).reshape(prob.shape)
            cost = self.class_weight * (positive - negative) + self.l1_weight * l1 - self.giou_weight * giou
            cost, rows_cpu = cost.float().cpu().numpy(), rows.cpu().numpy()
        target_index, token_index = [], []
        for row in np.unique(rows_cpu):
            mine = np.flatnonzero(rows_cpu == row)
            matched_targets, tokens = linear_sum_assignment(cost[mine])
            target_index.append(mine[matched_targets])
            token_index.append(tokens)
        if not target_index:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(target_index), np.concatenate(token_index)

    def loss(self, outputs: Detections, batch: Batch) -> torch.Tensor:
        targets: DetectionTargetsBatch = batch.targets
        trained = torch.tensor(self.trained_queries, device=outputs.logits.device)
        keep = ~targets.crowd & trained[targets.labels]
        target_index, token_index = self._match(outputs, targets, keep)
        device = outputs.logits.device
        target_index = torch.as_tensor(target_index, device=device, dtype=torch.long)
        token_index = torch.as_tensor(token_index, device=device, dtype=torch.long)
        rows = targets.object_row[keep][target_index]
        labels = targets.labels[keep][target_index]
        true_boxes = targets.boxes[keep][target_index]
        one_hot = torch.zeros_like(outputs.logits)
        one_hot[rows, token_index, labels] = 1.0
        count = max(len(rows), 1)
        focal = sigmoid_focal_loss(
            outputs.logits[..., trained],
            one_hot[..., trained],
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            reduction="sum",
        )
        matched = outputs.boxes[rows, token_index]
        l1 = F.l1_loss(matched, true_boxes, reduction="sum")
        giou = generalized_box_iou_loss(
            box_convert(matched, "cxcywh", "xyxy"), box_convert(true_boxes, "cxcywh", "xyxy"), reduction="sum"
        )
        return (self.class_weight * focal + self.l1_weight * l1 + self.giou_weight * giou) / count

    # -- evaluation -------------------------------------------------------------------------------------------
    def make_metric(self) -> COCODetectionMetric:
        categories = list(zip(self.query_ids, self.queries))
        groups = {}
        if self.heldout:
            trained = self.trained_queries
            groups = {
                "seen": [i for i, t in zip(self.query_ids, trained) if t],
                "heldout": [i for i, t in zip(self.query_ids, trained) if not t],
            }
        return COCODetectionMetric(categories, {name: ids for name, ids in groups.items() if ids})

    def validation_keys(self) -> list[str]:
        groups = ("seen", "heldout") if self.heldout else ()
        names = COCODetectionMetric([], {g: [] for g in groups}).names
        return [self.metric_key("val", name) for name in names]

    def decode(self, outputs: Detections, targets: DetectionTargetsBatch) -> DecodedDetections:
        """The `max_detections` highest-scored (token, query) pairs of each image (DETR's decoding: every pair is a
        detection; no NMS, the matching taught the tokens not to repeat each other)."""
        scores = torch.sigmoid(outputs.logits.float())
        batch, tokens, queries = scores.shape
        k = min(self.max_detections, tokens * queries)
        top, flat = scores.reshape(batch, -1).topk(k, dim=1)
        token, query = flat // queries, flat % queries
        unit = box_convert(outputs.boxes.float().gather(1, token.unsqueeze(-1).expand(-1, -1, 4)), "cxcywh", "xyxy")
        unit = unit.clamp(0, 1)
        scale = targets.image_size.to(unit.device).repeat(1, 2).unsqueeze(1)
        xywh = box_convert(unit * scale, "xyxy", "xywh")
        rows = torch.arange(batch, device=unit.device).repeat_interleave(k)
        return DecodedDetections(rows, query.flatten(), xywh.reshape(-1, 4), unit.reshape(-1, 4), top.flatten())

    def update_metric(self, metric: COCODetectionMetric, outputs: Detections, batch: Batch) -> None:
        targets: DetectionTargetsBatch = batch.targets
        found = self.decode(outputs, targets)
        ids = torch.tensor(self.query_ids, device=found.query.device)
        metric.update(
            image_id=targets.image_id,
            image_size=targets.image_size,
            gt_image=targets.image_id[targets.object_row],
            gt_category=ids.to(targets.labels.device)[targets.labels],
            gt_box=targets.pixel_boxes,
            gt_area=targets.area,
            gt_crowd=targets.crowd,
            det_image=targets.image_id.to(found.row.device)[found.row],
            det_category=ids[found.query],
            det_box=found.xywh,
            det_score=found.score,
        )

    def predictions(self, outputs: Detections, batch: Batch) -> list[dict[str, Any]]:
        """COCO results records; with phrase queries each also names its `query` (its category_id is the query's
        number, 1…, in the task's query list)."""
        targets: DetectionTargetsBatch = batch.targets
        found = self.decode(outputs, targets)
        image_ids, queries = targets.image_id.tolist(), found.query.tolist()
        records = []
        for row, query, box, score in zip(found.row.tolist(), queries, found.xywh.tolist(), found.score.tolist()):
            record = {"image_id": image_ids[row], "category_id": self.query_ids[query], "bbox": box, "score": score}
            if self.query_source != "categories":
                record["query"] = self.queries[query]
            records.append(record)
        return records

    def sample_notes(self, outputs: Detections, batch: Batch, count: int) -> list[SampleNote]:
        targets: DetectionTargetsBatch = batch.targets
        found = self.decode(outputs, targets)
        scale = targets.image_size.repeat(1, 2)
        notes = []
        for row in range(min(count, len(targets.image_id))):
            mine = (found.row == row) & (found.score >= self.sample_threshold)
            shown = mine.nonzero().flatten()[:SAMPLE_BOXES].tolist()
            truth = (targets.object_row == row).nonzero().flatten().tolist()
            true_boxes = box_convert(targets.pixel_boxes[truth], "xywh", "xyxy") / scale[row]
            predicted = ", ".join(f"{self.queries[int(found.query[i])]} {float(found.score[i]):.2f}" for i in shown)
            notes.append(
                SampleNote(
                    int(batch.image_index[row]),
                    [
                        f"pred (red): {predicted or '-'}",
                        f"true (green): {', '.join(self.queries[int(targets.labels[i])] for i in truth) or '-'}",
                    ],
                    [(found.xyxy_unit[i].tolist(), PREDICTED) for i in shown]
                    + [(box.tolist(), TRUE) for box in true_boxes],
                )
            )
        return notes

    # -- prediction on a user's inputs (cmvl/tasks/prediction.py): an image and free-text queries -------------
    predict_queries = True  # a request may name its own queries (default: the checkpoint's `queries`)

    def predict_results(self, outputs: Detections, batch: Batch, options: PredictOptions) -> list[DetectionsResult]:
        """Each image's detections as evaluation decodes them (the same boxes and scores as its results file), those
        scored at least `options.threshold` (else `task.sample_threshold`), at most `options.top_k` (else
        `task.max_detections`), best first."""
        targets: PredictTargets = batch.targets
        found = self.decode(outputs, targets)
        threshold = self.sample_threshold if options.threshold is None else float(options.threshold)
        top_k, queries = options.top(self.max_detections), list(batch.queries.texts)
        kept: list[list[Detection]] = [[] for _ in range(len(targets.image_size))]
        columns = (found.row.tolist(), found.query.tolist(), found.xywh.tolist(), found.score.tolist())
        for row, query, box, score in zip(*columns):
            if score >= threshold and len(kept[row]) < top_k:
                kept[row].append(Detection(queries[query], round(score, 6), tuple(round(v, 2) for v in box)))
        return [DetectionsResult(self.name, mine, queries, threshold) for mine in kept]

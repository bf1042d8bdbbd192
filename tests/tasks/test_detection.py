"""task=detection without training: targets from the objects table, the Hungarian matching and the loss, held-out
queries, decoding to COCO results, config errors, and the detector family in a multitask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmvl.data.sources.shapes import ShapesSource
from cmvl.errors import ConfigError
from cmvl.models.families.detector import Detections, DetectorModel
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.tasks.base import family_problem
from cmvl.tasks.detection import DetectionTargetsBatch, DetectionTask
from cmvl.tasks.multitask import MultiTask
from cmvl.tasks.vqa import VQATask
from tests.conftest import TINY_SPEC


@pytest.fixture(scope="module")
def table(tiny_world):
    shapes = ShapesSource(root=str(tiny_world), num_images=TINY_SPEC.images, image_size=TINY_SPEC.size, seed=3)
    return shapes.table("objects", "val")


def _fitted(table, **settings) -> DetectionTask:
    task = DetectionTask(**settings)
    task.fit(table)
    return task


def test_targets_pair_each_object_with_the_query_that_names_it(table):
    rows = table.to_pylist()
    for settings, name_of in (({}, "category"), ({"queries": "phrases"}, "phrase")):
        task = _fitted(table, **settings)
        batch = task.targets(table).collate(list(range(len(rows))))
        names = [task.queries[q] for q in batch.labels.tolist()]
        expected = [
            (task.categories[label] if name_of == "category" else phrase)
            for row in rows
            for label, phrase in zip(row["labels"], row["phrases"])
        ]
        assert names == expected
        assert batch.object_row.tolist() == [i for i, row in enumerate(rows) for _ in row["labels"]]
    assert _fitted(table, queries="phrases").queries[:2] == ["blue circle", "blue square"]
    first = task.targets(table).collate([1])
    x, y, w, h = rows[1]["boxes"][0]
    assert first.boxes[0].tolist() == pytest.approx([(x + w / 2) / 32, (y + h / 2) / 32, w / 32, h / 32])
    assert first.pixel_boxes[0].tolist() == pytest.approx([x, y, w, h])


def _targets(boxes: list[list[float]], labels: list[int], crowd: list[bool] | None = None) -> DetectionTargetsBatch:
    count = len(labels)
    return DetectionTargetsBatch(
        image_id=torch.tensor([7]),
        image_size=torch.tensor([[32.0, 32.0]]),
        object_row=torch.zeros(count, dtype=torch.long),
        labels=torch.tensor(labels),
        boxes=torch.tensor(boxes),
        pixel_boxes=torch.tensor(boxes) * 32,
        area=torch.full((count,), 10.0),
        crowd=torch.tensor(crowd or [False] * count),
    )


class _Batch:
    def __init__(self, targets: DetectionTargetsBatch) -> None:
        self.targets = targets


TRUE_BOXES = [[0.2, 0.2, 0.1, 0.1], [0.7, 0.3, 0.2, 0.2], [0.5, 0.8, 0.3, 0.1]]
HOLDERS = [5, 9, 2]  # the tokens that predict the true boxes


def _outputs(seed: int = 0, queries: int = 3) -> Detections:
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.rand(1, 16, 4, generator=generator) * 0.5 + 0.25
    logits = torch.randn(1, 16, queries, generator=generator) - 3
    for query, (box, token) in enumerate(zip(TRUE_BOXES, HOLDERS)):
        boxes[0, token] = torch.tensor(box)
        logits[0, token, query] = 4.0 - query / 2
    return Detections(boxes=boxes, logits=logits)


def test_hungarian_matching_finds_the_tokens_that_hold_the_objects(table):
    task = _fitted(table)
    targets = _targets(TRUE_BOXES, [0, 1, 2])
    keep = torch.ones(3, dtype=torch.bool)
    target_index, token_index = task._match(_outputs(), targets, keep)
    assert dict(zip(target_index.tolist(), token_index.tolist())) == dict(enumerate(HOLDERS))
    right = task.loss(_outputs(), _Batch(targets))
    shuffled = _outputs()
    shuffled = Detections(
        boxes=shuffled.boxes[:, torch.randperm(16, generator=torch.Generator().manual_seed(1))], logits=shuffled.logits
    )
    assert float(right) < float(task.loss(shuffled, _Batch(targets)))


def test_crowd_regions_are_not_matched(table):
    task = _fitted(table)
    outputs = _outputs()
    plain = task.loss(outputs, _Batch(_targets(TRUE_BOXES[:2], [0, 1])))
    with_crowd = task.loss(outputs, _Batch(_targets(TRUE_BOXES, [0, 1, 2], crowd=[False, False, True])))
    assert float(plain) == pytest.approx(float(with_crowd))


def test_heldout_queries_get_no_loss_and_are_scored_apart(table):
    task = _fitted(table, queries="phrases", heldout_queries=["red circle", "blue square"])
    held = [task.queries.index(q) for q in ("red circle", "blue square")]
    queries = len(task.queries)
    targets = _targets(TRUE_BOXES, [held[0], 3, held[1]])
    outputs = _outputs(queries=queries)
    changed = outputs.logits.clone()
    changed[..., held] = torch.randn(1, 16, 2) * 5
    loss = task.loss(outputs, _Batch(targets))
    assert float(loss) == pytest.approx(float(task.loss(Detections(outputs.boxes, changed), _Batch(targets))))
    assert float(loss) > 0
    metric = task.make_metric()
    assert {"AP50", "seen_AP50", "heldout_AP50", "heldout_AR100"} <= set(metric.names)
    assert task.monitor_key == "seen_AP50" and "val/detection/heldout_AP50" in task.validation_keys()
    assert sorted(metric.groups["heldout"]) == sorted(task.query_ids[i] for i in held)
    assert "red circle" not in task.vocabulary_texts(table) and "red square" in task.vocabulary_texts(table)
    assert task.query_texts() == task.queries  # evaluation asks every query, held-out ones too


def test_decoding_gives_coco_results_in_pixels(table):
    task = _fitted(table, max_detections=4)
    targets = _targets(TRUE_BOXES, [0, 1, 2])
    records = task.predictions(_outputs(), _Batch(targets))
    assert len(records) == 4 and set(records[0]) == {"image_id", "category_id", "bbox", "score"}
    best = records[0]  # the highest score first: token 5 with its query
    assert best["image_id"] == 7 and best["category_id"] == task.query_ids[0]
    assert best["bbox"] == pytest.approx([0.15 * 32, 0.15 * 32, 0.1 * 32, 0.1 * 32], abs=1e-4)
    phrases = _fitted(table, queries="phrases", max_detections=2)
    record = phrases.predictions(_outputs(queries=len(phrases.queries)), _Batch(targets))[0]
    assert record["query"] == phrases.queries[0] and record["category_id"] == 1


def test_bad_settings_are_one_line(table):
    with pytest.raises(ConfigError, match="task.heldout_queries: green hexagon is not one of"):
        _fitted(table, queries="phrases", heldout_queries=["green hexagon"])
    with pytest.raises(ConfigError, match="nothing is left to train on"):
        _fitted(table, heldout_queries=["circle", "square", "triangle"])
    with pytest.raises(ConfigError, match="task.queries=boxes: choose one of categories, phrases"):
        DetectionTask(queries="boxes")
    with pytest.raises(ConfigError, match="task.condition=film"):
        DetectionTask(condition="film")


def test_the_detector_family_runs_a_multitask_with_detection():
    assert DetectionTask(condition="fusion").parts == {"vision", "text", "fusion"}
    assert DetectionTask().parts == {"vision", "text"}
    joint = MultiTask(tasks={"vqa": VQATask(), "detection": DetectionTask()})
    assert joint.families == (DetectorModel,)
    assert family_problem(joint, DetectorModel) is None
    assert "model=vl_fusion does not fit" in family_problem(joint, VisionLanguageModel)
    assert np.isin(["vision", "text", "fusion"], sorted(joint.parts)).all()


def test_each_grid_token_starts_at_its_own_cell_and_scores_by_query_similarity():
    from cmvl.models.families.detector import DetectionHead
    from cmvl.models.tokens import Tokens

    torch.manual_seed(0)
    head = DetectionHead(8, 16, 0.0)
    feats = torch.randn(2, 1 + 2 * 3, 8)  # a [CLS]-like token in front of a 2×3 grid, as ViT encoders give
    grid = Tokens(feats, torch.ones(2, 7, dtype=torch.bool), (2, 3)).grid_tokens()
    queries = torch.randn(4, 8)
    found = head(grid, queries)
    assert found.boxes.shape == (2, 6, 4) and found.logits.shape == (2, 6, 4)
    cells = [[(col + 0.5) / 3, (row + 0.5) / 2, 1 / 3, 1 / 2] for row in range(2) for col in range(3)]
    assert torch.allclose(found.boxes[0], torch.tensor(cells), atol=1e-5)  # the box MLP starts at zero: the prior
    conditioned = head(grid, queries.expand(2, 4, 8))  # per-image (fusion-conditioned) queries, the same here
    assert torch.allclose(conditioned.logits, found.logits, atol=1e-5)
    assert not torch.allclose(head(grid, queries.flip(0)).logits, found.logits)


def test_a_list_of_queries_is_for_evaluation_only(table):
    with pytest.raises(ConfigError, match=r"task.queries=\[...\]: a list of texts evaluates a trained checkpoint"):
        DetectionTask(queries=["red circle"]).fit(table)
    with pytest.raises(ConfigError, match="give non-empty texts"):
        DetectionTask(queries=["red circle", " "])
    with pytest.raises(ConfigError, match="'square' is given twice"):
        DetectionTask(queries=["square", "square"])
    trained = DetectionTask()
    trained.fit(table)
    asked = DetectionTask(queries=["red circle", "square"])
    asked.load_state_dict(trained.state_dict())  # as cmvl eval restores it: the texts replace the categories
    assert asked.queries == ["red circle", "square"] and asked.heldout == ["red circle"]
    found = asked.targets(table)
    assert {asked.queries[i] for i in found.labels.tolist()} == {"red circle", "square"}
    with pytest.raises(ConfigError, match="trained on task.queries=categories"):
        DetectionTask(queries="phrases").load_state_dict(trained.state_dict())

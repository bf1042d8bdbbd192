"""scripts/bench_explain.py: every shapes question names the objects it refers to, and the measurements are
consistent on the session's tiny VQA run (correctness only: no score of a tiny model is a threshold here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import script_module


@pytest.fixture(scope="module")
def bench():
    yield from script_module("bench_explain")


def test_referred_objects_of_each_question_kind(bench):
    box = bench.Box
    red_circle = box("circle", "red", "small", 2, 2, 10, 10)
    blue_square = box("square", "blue", "large", 40, 4, 18, 18)
    red_square = box("square", "red", "small", 30, 40, 10, 10)
    scene = [red_circle, blue_square, red_square]

    def names(question):
        return [(o.color, o.shape) for o in bench.referred_objects(question, scene, 64)]

    assert names("How many shapes are there?") == [("red", "circle"), ("blue", "square"), ("red", "square")]
    assert names("How many red shapes are there?") == [("red", "circle"), ("red", "square")]
    assert names("How many squares are there?") == [("blue", "square"), ("red", "square")]
    assert names("How many triangles are there?") == []  # none: left out
    assert names("Is there a green circle?") == []  # absent: left out
    assert names("Is there a red circle?") == [("red", "circle")]
    assert names("What color is the circle?") == [("red", "circle")]
    assert names("What color is the large square?") == [("blue", "square")]
    assert names("What shape is the blue object?") == [("blue", "square")]
    assert names("What color is the shape right of the red circle?") == [
        ("red", "circle"),
        ("blue", "square"),
        ("red", "square"),
    ]
    assert names("What color is the shape above the red square?") == [
        ("red", "square"),
        ("red", "circle"),
        ("blue", "square"),
    ]
    assert names("Is the red circle left of the blue square?") == [("red", "circle"), ("blue", "square")]
    mask = bench.box_mask([red_circle], 64)
    assert mask.sum() == 100 and mask[2, 2] and not mask[12, 12]


def test_every_question_of_the_tiny_world_parses(bench, tiny_world):
    rows = bench.read_questions(tiny_world, "val", None)
    assert 0 < len(rows) < 100  # 20 images × 5 questions, absent-object ones left out
    assert all(r["mask"].any() and r["mask"].shape == (32, 32) for r in rows)


def test_pointing_energy_and_deletion_masking(bench):
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[:, :2, :2] = True
    maps = torch.zeros(2, 2, 2)
    maps[0, 0, 0] = 1.0  # inside the box
    maps[1, 1, 1] = 1.0  # outside it
    hit, energy = bench.pointing_and_energy(maps, masks)
    assert hit.tolist() == [1.0, 0.0] and energy[0] > 0.5 > energy[1]
    from cmvl.models.tokens import Tokens

    feats = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    vision = Tokens(feats, torch.ones(2, 4, dtype=torch.bool), (2, 2))
    masked = bench.masked_vision(vision, torch.tensor([[0], [3]]))
    assert torch.equal(masked.feats[0, 0], feats[0].mean(0)) and torch.equal(masked.feats[1, 3], feats[1].mean(0))
    assert torch.equal(masked.feats[0, 1:], feats[0, 1:]) and torch.equal(vision.feats, feats)


def test_bench_on_the_tiny_run(bench, finished_tiny_run, capsys):
    result = bench.main([f"ckpt={finished_tiny_run / 'checkpoints' / 'last.ckpt'}", "limit=40"])
    trained, randomised, area = result["trained"], result["randomised"], result["area_baseline"]
    assert result["questions"] == 40 and 0 < area < 1
    for value in (trained["gradcam/pointing"], trained["attention/energy"], randomised["gradcam/pointing"]):
        assert 0 <= value <= 1
    assert math.isclose(result["ratios"]["gradcam_pointing/area"], trained["gradcam/pointing"] / area)
    assert 0 <= trained["accuracy_top_deleted"] <= 1 and 0 <= trained["accuracy"] <= 1
    assert "gradcam, randomised" in capsys.readouterr().out

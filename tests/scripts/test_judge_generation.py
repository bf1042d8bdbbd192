"""scripts/judge_generation.py: the prompts are the world's own captions, the scores judge colour, shape, count,
binding and position as documented, and the report runs end to end on tiny checkpoints and refuses bad input in one
line (correctness only: no score of a tiny model is a threshold here)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cmvl.config.compose import compose_config
from cmvl.training.train import run_training
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, script_module


@pytest.fixture(scope="module")
def judging():
    yield from script_module("judge_generation")


def test_the_prompts_are_the_worlds_first_captions(judging, tiny_world):
    images = judging.read_real_split(tiny_world, "val")
    assert len(images) == 20 and all(im.file.is_file() for im in images)
    for image in images:
        assert [o.cx for o in image.objects] == sorted(o.cx for o in image.objects)
        assert judging.listing([(o.color, o.shape) for o in image.objects]) == image.caption


def test_one_attribute_variants_change_exactly_one_colour_or_shape(judging):
    colors, shapes = ["blue", "green", "red"], ["circle", "square"]
    assert judging.one_attribute_variants([("red", "circle")], colors, shapes) == [
        "A blue circle.",
        "A green circle.",
        "A red square.",
    ]
    two = judging.one_attribute_variants([("red", "circle"), ("blue", "square")], colors, shapes)
    assert len(two) == 6 and "A red circle and a blue square." not in two
    assert "A blue circle and a blue square." in two and "A red circle and a blue circle." in two


def test_binding_position_and_count_of_two_object_prompts(judging):
    thing = judging.Thing
    asked = [("red", "circle"), ("blue", "square")]
    right = [thing("red", "circle", 5, 10), thing("blue", "square", 20, 10)]
    assert judging.prompt_scores(asked, right) == {"binding": True, "position": True, "count_two": True}
    swapped = [thing("blue", "circle", 5, 10), thing("red", "square", 20, 10)]  # the colours bound the wrong way
    assert judging.prompt_scores(asked, swapped) == {"binding": False, "position": False, "count_two": True}
    mirrored = [thing("red", "circle", 20, 10), thing("blue", "square", 5, 10), thing("red", "circle", 1, 1, score=0.1)]
    assert judging.prompt_scores(asked, mirrored) == {"binding": True, "position": False, "count_two": False}


def test_single_object_prompts_judge_the_best_scored_object(judging):
    thing = judging.Thing
    found = [thing("red", "square", 5, 5, score=0.9), thing("red", "circle", 20, 20, score=0.6)]
    assert judging.prompt_scores([("red", "circle")], found) == {
        "color": True,
        "shape": False,
        "attribute": False,
        "count_single": False,
    }
    assert judging.prompt_scores([("red", "circle")], []) == {
        "color": False,
        "shape": False,
        "attribute": False,
        "count_single": False,
    }
    assert judging.summarise([[("red", "circle")], [("red", "square")]], [found, found])["attribute"] == 0.5


def test_the_judges_accuracy_on_real_images_matches_objects_by_place(judging, tmp_path):
    thing, real = judging.Thing, judging.RealImage
    truth = [thing("red", "circle", 5, 5, r=3), thing("blue", "square", 25, 5, r=3)]
    image = real(1, tmp_path / "x.jpg", truth, "A red circle and a blue square.")
    perfect = judging.judge_accuracy([image], [[thing("blue", "square", 24, 6), thing("red", "circle", 5, 4)]], 32)
    assert (perfect["color"], perfect["shape"], perfect["count"], perfect["position"]) == (1.0, 1.0, 1.0, 1.0)
    far = [thing("red", "circle", 15, 20), thing("blue", "triangle", 25, 5)]  # the circle found 15 px away: unmatched
    scored = judging.judge_accuracy([image], [far], 32)
    assert (scored["color"], scored["shape"], scored["count"], scored["position"]) == (0.5, 0.0, 1.0, 0.0)


@pytest.fixture(scope="module")
def checkpoints(tiny_world, tmp_path_factory):
    """Tiny generation, phrase-detection and retrieval runs of the tiny world (one epoch of 3 steps each)."""
    root = tmp_path_factory.mktemp("judged")
    runs = {
        "generation": ["task=generation", "generator.channels=8"],
        "detection": ["task=detection", "task.queries=phrases"],
        "retrieval": ["task=retrieval"],
    }
    paths = {}
    for name, task in runs.items():
        out = root / name
        config = [*TINY_WORLD_ANY_TASK, *TINY_TRAINING, "trainer.max_epochs=1", *task, f"paths.output_dir={out}"]
        run_training(compose_config(config))
        paths[name] = out / "checkpoints" / "last.ckpt"
    return paths


def test_threshold_auto_takes_the_middle_of_the_thresholds_with_the_best_lowest_accuracy(judging, tmp_path):
    judge = object.__new__(judging.Judge)
    judge.pairs, judge.size = [("red", "circle"), ("blue", "square")], 32
    truth = judging.RealImage(1, tmp_path / "x.png", [judging.Thing("red", "circle", 5, 5, r=3)], "A red circle.")
    # The red circle scores 0.92, a blue square that is not there 0.28: right from 0.3 up to 0.9 (the middle: 0.6).
    detected = (torch.tensor([0.92, 0.28]), torch.tensor([0, 1]), torch.tensor([[2.0, 2, 8, 8], [20, 20, 26, 26]]))
    assert judging.choose_threshold([truth], [detected], judge) == 0.6


def test_the_report_end_to_end_on_tiny_checkpoints(judging, checkpoints, tiny_world, tmp_path, capsys):
    out = tmp_path / "report.json"
    args = [
        f"ckpt={checkpoints['generation']}",
        f"judge={checkpoints['detection']}",
        f"retrieval={checkpoints['retrieval']}",
        "n=2",
        "limit=3",
        f"out={out}",
    ]
    report = judging.main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    printed = capsys.readouterr().out
    assert "FD-judge" in printed and "real images (ceiling)" in printed and "shuffled prompts (floor)" in printed
    judged_real = len(judging.one_or_two(judging.read_real_split(tiny_world, "test")))  # threshold chosen on val
    assert report["prompts"] == 3 and report["judge_on_real"]["images"] == judged_real > 0
    rows = report["rows"]
    assert [rows[k]["images"] for k in rows] == [3, 6, 6]
    for row in rows.values():
        assert math.isfinite(row["fd_judge"]) and row["fd_judge"] >= -1e-6
        assert all(0.0 <= v <= 1.0 for k, v in row.items() if k not in ("fd_judge", "images"))
        assert "r_at_1_one_attribute" in row
    assert judging.main(args[:2] + ["n=2", "limit=3", "seed=0"])["rows"]["generated"] == {
        k: v for k, v in rows["generated"].items() if k != "r_at_1_one_attribute"
    }  # the same seed: the same scores


@pytest.mark.parametrize("case", ["judge_is_a_generator", "ckpt_is_a_detector", "out_not_json", "missing_file"])
def test_bad_input_is_one_line_and_exit_2(judging, checkpoints, tmp_path, capsys, case):
    gen, det = checkpoints["generation"], checkpoints["detection"]
    args = {
        "judge_is_a_generator": [f"ckpt={gen}", f"judge={gen}"],
        "ckpt_is_a_detector": [f"ckpt={det}", f"judge={det}"],
        "out_not_json": [f"ckpt={gen}", f"judge={det}", f"out={tmp_path / 'report.txt'}"],
        "missing_file": [f"ckpt={tmp_path / 'none.ckpt'}", f"judge={det}"],
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        judging.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("judge_generation: error: ")
    assert not (tmp_path / "report.txt").exists()

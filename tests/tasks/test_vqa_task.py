"""The VQA task: vocabulary, soft targets equal to official scores, metric via targets == official string scoring."""

import pyarrow as pa
import pytest
import torch

from cmvl.data.sources.vqa_v2 import QA_SCHEMA
from cmvl.metrics.vqa_normalize import vqa_score
from cmvl.tasks.vqa import AnswerLogits, VQATask
from tests.batch_helpers import batch_of

ROWS = [
    ("Is it red?", ["yes"] * 9 + ["Yes"], "yes/no", "yes"),
    ("How many?", ["2", "2", "two", "3", "3", "2", "2", "2", "2", "2"], "number", "2"),
    ("What color?", ["red", "red.", "blue", "blue", "blue", "red", "red", "red", "red", "red"], "other", "red"),
    ("Is it blue?", ["no"] * 10, "yes/no", "no"),
    ("How many now?", ["3"] * 7 + ["4"] * 3, "number", "3"),
]


def _table(rows):
    return pa.table(
        {
            "question_id": list(range(len(rows))),
            "image_id": [1] * len(rows),
            "image": ["x.jpg"] * len(rows),
            "question": [r[0] for r in rows],
            "answers": [r[1] for r in rows],
            "answer_type": [r[2] for r in rows],
            "question_type": ["q"] * len(rows),
            "multiple_choice_answer": [r[3] for r in rows],
        },
        schema=QA_SCHEMA,
    )


@pytest.fixture(params=["current", "2017"])
def task(request):
    t = VQATask(min_answer_count=1, vqa_eval=request.param)
    t.fit(_table(ROWS))
    return t


def test_vocabulary_is_normalised_and_ranked(task):
    assert task.answers[0] == "2" or task.answers[0] in {"yes", "red", "no", "3"}
    assert set(task.answers) == {"yes", "2", "red", "no", "3"}
    assert sum(task.answer_prior) == pytest.approx(1.0)


def test_min_count_and_top_k():
    t = VQATask(min_answer_count=2)
    t.fit(_table(ROWS + ROWS[:1]))
    assert t.answers == ["yes"]
    t = VQATask(min_answer_count=1, top_k=2)
    t.fit(_table(ROWS + ROWS[:1]))
    assert len(t.answers) == 2 and t.answers[0] == "yes"


def test_dense_targets_are_the_official_scores(task):
    targets = task.targets(_table(ROWS)).collate(list(range(len(ROWS))))
    for row, (_, human, _, _) in enumerate(ROWS):
        for j, answer in enumerate(task.answers):
            assert targets.scores[row, j].item() == vqa_score(answer, human, task.rules.version)


def test_metric_from_targets_equals_string_scoring(task):
    targets = task.targets(_table(ROWS))
    batch = batch_of(targets.collate(list(range(len(ROWS)))), len(ROWS))
    torch.manual_seed(0)
    logits = torch.randn(len(ROWS), len(task.answers))
    metric = task.make_metric()
    task.update_metric(metric, AnswerLogits(logits), batch)
    predictions = task.predictions(AnswerLogits(logits), batch)
    expected = sum(vqa_score(p["answer"], ROWS[p["question_id"]][1], task.rules.version) for p in predictions)
    expected /= len(ROWS)
    assert metric.compute()["acc"].item() == pytest.approx(expected, abs=1e-9)


def test_head_starts_at_the_answer_prior(task):
    head = task.build_head(16)
    probs = torch.sigmoid(head[-1].bias)
    assert torch.allclose(probs, torch.tensor(task.answer_prior), atol=1e-5)


def test_state_round_trip(task):
    other = VQATask()
    other.load_state_dict(task.state_dict())
    assert other.answers == task.answers and other.answer_prior == task.answer_prior


def test_unannotated_split_has_no_targets(task):
    table = _table(ROWS).set_column(4, "answers", pa.array([None] * len(ROWS), type=pa.list_(pa.string())))
    assert not task.targets(table).annotated

"""Official VQA normalisation and scoring, checked against hand-computed cases and the official quirks."""

import pytest

from cmvl.metrics.vqa_normalize import (
    normalize_answer,
    normalize_prediction,
    prepare_human_answers,
    process_punctuation,
    score_normalized,
    soft_scores,
    vqa_score,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),
        ("the dog", "dog"),
        ("A Red Car.", "red car"),
        ("dont", "don't"),
        ("yes!", "yes"),
        ("yes.", "yes"),
        ("  Yes\n", "yes"),
        ("1,000", "1000"),  # a digit,digit group removes every listed mark outright
        ("3.5", "3.5"),  # a period before a digit stays
        ("black/white", "black white"),  # a mark not touching a space becomes a space
        ("black / white", "black white"),  # ... touching a space it is removed (then split() folds the spaces)
        ("none", "0"),
        ("an apple", "apple"),
    ],
)
def test_prediction_normalisation(raw, expected):
    assert normalize_prediction(raw) == expected


def test_period_rule_removes_at_most_32_periods():
    # The official call passes re.UNICODE (32) as `count`.
    assert process_punctuation("." * 40) == "." * 8


def test_human_answers_only_normalised_when_not_unanimous():
    assert prepare_human_answers(["yes."] * 10) == ["yes."] * 10  # unanimous: left as is
    assert prepare_human_answers(["yes.", "yes"] + ["yes"] * 8)[0] == "yes"
    # Human answers never get lower-cased or digit-mapped by the evaluator.
    assert prepare_human_answers(["Two", "2"] + ["2"] * 8)[0] == "Two"


@pytest.mark.parametrize(("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_scores(matches, expected):
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert score_normalized("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_leave_one_out_exact_fractions():
    # 1 match: 9 subsets contain it (1/3 each), 1 does not: 9 * (1/3) / 10 = 0.3 exactly as the official loop.
    answers = ["cat"] + ["dog"] * 9
    official = sum(min(1, sum(a == "cat" for j, a in enumerate(answers) if j != i) / 3) for i in range(10)) / 10
    assert score_normalized("cat", answers) == official


def test_unanimous_answers_with_punctuation_do_not_match_clean_prediction():
    # Quirk: 10 identical "yes." are not punctuation-processed, so the normalised prediction "yes" scores 0.
    assert vqa_score("yes", ["yes."] * 10) == 0.0
    assert vqa_score("yes", ["yes."] * 9 + ["yes"]) == 1.0


def test_prediction_normalised_before_matching():
    assert vqa_score("Two.", ["2"] * 10) == 1.0
    assert vqa_score("two", ["two"] * 10) == 0.0  # the prediction becomes "2"; human answers stay "two"


def test_soft_scores_are_the_official_score_of_each_class():
    human = prepare_human_answers(["2", "2", "two", "3", "2", "2", "2", "2", "2", "Two"])
    scores = soft_scores(human)
    for answer, score in scores.items():
        assert score == pytest.approx(vqa_score(answer, ["2", "2", "two", "3", "2", "2", "2", "2", "2", "Two"]))
    assert scores["2"] == 1.0 and scores["3"] == pytest.approx(0.3)


@pytest.mark.parametrize("raw", ["Two", "yes.", "the red car", "dont", "black/white", "1,000", "a-b c", "3.5"])
def test_normalisation_is_idempotent(raw):
    # Vocabulary answers are normalised; scoring a vocabulary answer normalises it again.
    once = normalize_answer(raw)
    assert normalize_answer(once) == once

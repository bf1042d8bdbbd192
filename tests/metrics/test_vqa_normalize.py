"""Official VQA normalisation and scoring, checked against hand-computed cases and the official quirks."""

import re

import pytest

from cmvl.errors import ConfigError
from cmvl.metrics.vqa_normalize import (
    VQA_EVAL,
    PreparedAnswers,
    VocabularyScorer,
    leave_one_out_score,
    normalize_answer,
    normalize_prediction,
    process_punctuation,
    vqa_eval_rules,
    vqa_score,
)

CURRENT, OLD = VQA_EVAL["current"], VQA_EVAL["2017"]


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


def test_2017_human_answers_only_get_punctuation_and_only_when_not_unanimous():
    assert OLD.prepare(["yes."] * 10) == PreparedAnswers(("yes.",) * 10, False)  # unanimous: left as is
    assert OLD.prepare(["yes.", "yes"] + ["yes"] * 8).answers[0] == "yes"
    # Human answers never get stripped, lower-cased or digit-mapped by the 2017 evaluator.
    assert OLD.prepare(["Two ", "2"] + ["2"] * 8).answers[0] == "Two "


def test_current_human_answers_are_stripped_then_fully_processed_when_not_unanimous():
    assert CURRENT.prepare([" Yes\n"] * 10) == PreparedAnswers(("Yes",) * 10, False)
    assert CURRENT.prepare(["Two ", "2"] + ["2"] * 8) == PreparedAnswers(("2",) * 10, True)
    assert CURRENT.prepare(["the dog", "Dog."] + ["a dog"] * 8) == PreparedAnswers(("dog",) * 10, True)


@pytest.mark.parametrize(("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_scores(matches, expected):
    answers = ("cat",) * matches + ("dog",) * (10 - matches)
    assert leave_one_out_score("cat", PreparedAnswers(answers, True)) == pytest.approx(expected, abs=1e-12)


def test_leave_one_out_exact_fractions():
    # 1 match: 9 subsets contain it (1/3 each), 1 does not: 9 * (1/3) / 10 = 0.3 exactly as the official loop.
    answers = ["cat"] + ["dog"] * 9
    official = sum(min(1, sum(a == "cat" for j, a in enumerate(answers) if j != i) / 3) for i in range(10)) / 10
    assert leave_one_out_score("cat", PreparedAnswers(tuple(answers), True)) == official


@pytest.mark.parametrize("version", list(VQA_EVAL))
def test_unanimous_answers_with_punctuation_do_not_match_clean_prediction(version):
    # Quirk of both: 10 identical "yes." are not punctuation-processed, so "yes" scores 0.
    assert vqa_score("yes", ["yes."] * 10, version) == 0.0
    assert vqa_score("yes", ["yes."] * 9 + ["yes"], version) == 1.0


def test_2017_prediction_always_normalised_before_matching():
    assert vqa_score("Two.", ["2"] * 10, "2017") == 1.0
    assert vqa_score("two", ["two"] * 10, "2017") == 0.0  # the prediction becomes "2"; human answers stay "two"
    assert vqa_score("Yes", ["yes"] * 10, "2017") == 1.0


def test_current_prediction_only_stripped_when_answers_are_unanimous():
    assert vqa_score("Two.", ["2"] * 10) == 0.0
    assert vqa_score(" two\n", ["two"] * 10) == 1.0
    assert vqa_score("Yes", ["yes"] * 10) == 0.0
    assert vqa_score("Yes", ["yes"] * 9 + ["no"]) == 1.0


def test_vocabulary_scores_are_the_official_score_of_each_class():
    human = ["2", "2", "two", "3", "2", "2", "2", "2", "2", "Two"]
    vocabulary = ["2", "two", "Two", "3", "4", "Yes"]
    for rules in VQA_EVAL.values():
        scores = VocabularyScorer(rules, vocabulary).scores(human)
        assert {vocabulary[j]: s for j, s in scores.items()} == {
            a: rules.score(a, human) for a in vocabulary if rules.score(a, human) > 0
        }
    assert VocabularyScorer(CURRENT, vocabulary).scores(["Yes"] * 10) == {5: 1.0}
    assert VocabularyScorer(OLD, vocabulary).scores(["2"] * 10) == {0: 1.0, 1: 1.0, 2: 1.0}


def test_an_unknown_version_is_a_config_error():
    with pytest.raises(ConfigError, match=re.escape("task.vqa_eval=2019: choose one of current | 2017")):
        vqa_eval_rules("2019")


@pytest.mark.parametrize("raw", ["Two", "yes.", "the red car", "dont", "black/white", "1,000", "a-b c", "3.5"])
def test_normalisation_is_idempotent(raw):
    # Vocabulary answers are normalised; scoring a vocabulary answer normalises it again.
    once = normalize_answer(raw)
    assert normalize_answer(once) == once

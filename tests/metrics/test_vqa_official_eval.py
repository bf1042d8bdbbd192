"""cmvl's VQA scoring against faithful transcriptions of the official evaluator (GT-Vision-Lab/VQA vqaEval.py).

`official_current` is the accuracy loop of the current code (commit a013f00, 2021), `official_2017` the loop before
it; both keep the official quirks (in-place mutation of the answer dicts, the `item != gtAnsDatum` leave-one-out,
`processPunctuation`'s regexes with `re.UNICODE` as the `count`, `manualMap.setdefault`). The code is Python 2: its
regex patterns are byte strings, whose `\d` is ASCII-only, hence `re.ASCII` in this Python 3 transcription.
"""

import copy
import functools
import random
import re

import numpy as np
import pyarrow as pa
import pytest
import torch
from omegaconf import OmegaConf

from cmvl.data.shapes.questions import Question, annotate
from cmvl.data.shapes.scene import COLORS, SHAPES
from cmvl.data.sources.vqa_v2 import QA_SCHEMA
from cmvl.metrics.vqa_normalize import VQA_EVAL, vqa_score
from cmvl.tasks.vqa import AnswerLogits, VQATask, fill_vqa_eval_of_older_checkpoint
from tests.batch_helpers import batch_of
from tests.conftest import REPO, assert_one_line_error, cli_in_process


class OfficialVQAEval:
    """The official `VQAEval` normalisation tables and helpers, transcribed (identical in both versions)."""

    contractions = {
        'aint': "ain't", 'arent': "aren't", 'cant': "can't", 'couldve': "could've", 'couldnt': "couldn't",
        "couldn'tve": "couldn't've", "couldnt've": "couldn't've", 'didnt': "didn't", 'doesnt': "doesn't",
        'dont': "don't", 'hadnt': "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", 'hasnt': "hasn't",
        'havent': "haven't", 'hed': "he'd", "hed've": "he'd've", "he'dve": "he'd've", 'hes': "he's", 'howd': "how'd",
        'howll': "how'll", 'hows': "how's", "Id've": "I'd've", "I'dve": "I'd've", 'Im': "I'm", 'Ive': "I've",
        'isnt': "isn't", 'itd': "it'd", "itd've": "it'd've", "it'dve": "it'd've", 'itll': "it'll", "let's": "let's",
        'maam': "ma'am", 'mightnt': "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
        'mightve': "might've", 'mustnt': "mustn't", 'mustve': "must've", 'neednt': "needn't", 'notve': "not've",
        'oclock': "o'clock", 'oughtnt': "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
        "'ow'sat": "'ow's'at", 'shant': "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
        'shouldve': "should've", 'shouldnt': "shouldn't", "shouldnt've": "shouldn't've",
        "shouldn'tve": "shouldn't've", "somebody'd": 'somebodyd', "somebodyd've": "somebody'd've",
        "somebody'dve": "somebody'd've", 'somebodyll': "somebody'll", 'somebodys': "somebody's",
        'someoned': "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
        'someonell': "someone'll", 'someones': "someone's", 'somethingd': "something'd",
        "somethingd've": "something'd've", "something'dve": "something'd've", 'somethingll': "something'll",
        'thats': "that's", 'thered': "there'd", "thered've": "there'd've", "there'dve": "there'd've",
        'therere': "there're", 'theres': "there's", 'theyd': "they'd", "theyd've": "they'd've",
        "they'dve": "they'd've", 'theyll': "they'll", 'theyre': "they're", 'theyve': "they've", 'twas': "'twas",
        'wasnt': "wasn't", "wed've": "we'd've", "we'dve": "we'd've", 'weve': "we've", 'werent': "weren't",
        'whatll': "what'll", 'whatre': "what're", 'whats': "what's", 'whatve': "what've", 'whens': "when's",
        'whered': "where'd", 'wheres': "where's", 'whereve': "where've", 'whod': "who'd", "whod've": "who'd've",
        "who'dve": "who'd've", 'wholl': "who'll", 'whos': "who's", 'whove': "who've", 'whyll': "why'll",
        'whyre': "why're", 'whys': "why's", 'wont': "won't", 'wouldve': "would've", 'wouldnt': "wouldn't",
        "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", 'yall': "y'all", "yall'll": "y'all'll",
        "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
        'youd': "you'd", "youd've": "you'd've", "you'dve": "you'd've", 'youll': "you'll", 'youre': "you're",
        'youve': "you've",
    }  # fmt: skip

    def __init__(self):
        self.manualMap = {
            "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10",
        }  # fmt: skip
        self.articles = ["a", "an", "the"]
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
        self.commaStrip = re.compile(r"(\d)(\,)(\d)", re.ASCII)
        self.punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                      ",", "?", "!"]  # fmt: skip

    def processPunctuation(self, inText):  # noqa: N802 - the official name
        outText = inText  # noqa: N806
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, "")  # noqa: N806
            else:
                outText = outText.replace(p, " ")  # noqa: N806
        outText = self.periodStrip.sub("", outText, re.UNICODE)  # noqa: N806 - re.UNICODE lands in `count`
        return outText

    def processDigitArticle(self, inText):  # noqa: N802
        outText = []  # noqa: N806
        tempText = inText.lower().split()  # noqa: N806
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
            else:
                pass
        for wordId, word in enumerate(outText):  # noqa: N806
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        outText = " ".join(outText)  # noqa: N806
        return outText


class MemoizedOfficialVQAEval(OfficialVQAEval):
    """The same functions, remembered: they are pure, and the bulk checks below score each answer many times."""

    @functools.cache  # noqa: B019 - one instance for the whole module
    def processPunctuation(self, inText):  # noqa: N802
        return super().processPunctuation(inText)

    @functools.cache  # noqa: B019
    def processDigitArticle(self, inText):  # noqa: N802
        return super().processDigitArticle(inText)


EVALUATOR = MemoizedOfficialVQAEval()


def _gts(human):
    """One question's annotation as the VQA v2 json holds it (answer_id makes every answer dict distinct)."""
    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(human)]
    return {"answers": answers}


def official_current(prediction, human):
    """The per-question accuracy of vqaEval.py since a013f00, line for line."""
    self, gts, res = EVALUATOR, {0: _gts(human)}, {0: {"answer": prediction}}
    quesId = 0  # noqa: N806
    for ansDic in gts[quesId]["answers"]:  # noqa: N806
        ansDic["answer"] = ansDic["answer"].replace("\n", " ")
        ansDic["answer"] = ansDic["answer"].replace("\t", " ")
        ansDic["answer"] = ansDic["answer"].strip()
    resAns = res[quesId]["answer"]  # noqa: N806
    resAns = resAns.replace("\n", " ")  # noqa: N806
    resAns = resAns.replace("\t", " ")  # noqa: N806
    resAns = resAns.strip()  # noqa: N806
    gtAcc = []  # noqa: N806
    gtAnswers = [ans["answer"] for ans in gts[quesId]["answers"]]  # noqa: N806

    if len(set(gtAnswers)) > 1:
        for ansDic in gts[quesId]["answers"]:  # noqa: N806
            ansDic["answer"] = self.processPunctuation(ansDic["answer"])
            ansDic["answer"] = self.processDigitArticle(ansDic["answer"])
        resAns = self.processPunctuation(resAns)  # noqa: N806
        resAns = self.processDigitArticle(resAns)  # noqa: N806

    for gtAnsDatum in gts[quesId]["answers"]:  # noqa: N806
        otherGTAns = [item for item in gts[quesId]["answers"] if item != gtAnsDatum]  # noqa: N806
        matchingAns = [item for item in otherGTAns if item["answer"] == resAns]  # noqa: N806
        acc = min(1, float(len(matchingAns)) / 3)
        gtAcc.append(acc)
    avgGTAcc = float(sum(gtAcc)) / len(gtAcc)  # noqa: N806
    return avgGTAcc


def official_2017(prediction, human):
    """The per-question accuracy of vqaEval.py before a013f00, line for line."""
    self, gts, res = EVALUATOR, {0: _gts(human)}, {0: {"answer": prediction}}
    quesId = 0  # noqa: N806
    resAns = res[quesId]["answer"]  # noqa: N806
    resAns = resAns.replace("\n", " ")  # noqa: N806
    resAns = resAns.replace("\t", " ")  # noqa: N806
    resAns = resAns.strip()  # noqa: N806
    resAns = self.processPunctuation(resAns)  # noqa: N806
    resAns = self.processDigitArticle(resAns)  # noqa: N806
    gtAcc = []  # noqa: N806
    gtAnswers = [ans["answer"] for ans in gts[quesId]["answers"]]  # noqa: N806
    if len(set(gtAnswers)) > 1:
        for ansDic in gts[quesId]["answers"]:  # noqa: N806
            ansDic["answer"] = self.processPunctuation(ansDic["answer"])
    for gtAnsDatum in gts[quesId]["answers"]:  # noqa: N806
        otherGTAns = [item for item in gts[quesId]["answers"] if item != gtAnsDatum]  # noqa: N806
        matchingAns = [item for item in otherGTAns if item["answer"] == resAns]  # noqa: N806
        acc = min(1, float(len(matchingAns)) / 3)
        gtAcc.append(acc)
    avgGTAcc = float(sum(gtAcc)) / len(gtAcc)  # noqa: N806
    return avgGTAcc


OFFICIAL = {"current": official_current, "2017": official_2017}

# The issue's examples: (prediction, human answers, current official score).
ISSUE_EXAMPLES = [
    ("Yes", ["yes"] * 10, 0.0),
    ("two", ["two"] * 10, 1.0),
    ("Two.", ["2"] * 10, 0.0),
    ("2", ["Two"] * 7 + ["2"] * 3, 1.0),
    ("dog", ["the dog"] * 8 + ["dog", "a dog"], 1.0),
]
HAND_PICKED = [
    *[(p, h) for p, h, _ in ISSUE_EXAMPLES],
    ("yes", ["yes."] * 10),
    ("yes.", ["yes."] * 10),
    ("yes", ["yes."] * 9 + ["yes"]),
    (" yes ", ["yes "] * 10),
    ("yes", [" yes"] * 10),
    ("yes", ["yes\n"] * 9 + ["yes"]),
    ("yes\t", ["yes"] * 10),
    ("dont", ["don't"] * 5 + ["dont"] * 5),
    ("don't", ["dont"] * 10),
    ("none", ["0"] * 4 + ["none"] * 6),
    ("1,000", ["1000"] * 6 + ["1,000"] * 4),
    ("3.5", ["3.5"] * 9 + ["3.5."]),
    ("black/white", ["black and white"] * 5 + ["black white"] * 5),
    ("black / white", ["black/white"] * 3 + ["black white"] * 7),
    ("A Red Car.", ["red car"] * 2 + ["a red car"] * 2 + ["car"] * 6),
    ("." * 40, ["." * 40] * 9 + ["x"]),
    ("", ["yes"] * 5 + [""] * 5),
    ("an apple", ["apple"] * 10),
    ("Im", ["I'm"] * 3 + ["im"] * 7),
    ("", []),
]


def test_the_issue_examples_score_as_the_current_official_code():
    for prediction, human, expected in ISSUE_EXAMPLES:
        assert official_current(prediction, human) == expected
        assert vqa_score(prediction, human) == expected, (prediction, human)


def _official(version, prediction, human):
    return OFFICIAL[version](prediction, human) if human else 0.0  # the official loop divides by zero


@pytest.mark.parametrize("version", list(VQA_EVAL))
def test_hand_picked_cases_equal_the_official_code(version):
    for prediction, human in HAND_PICKED:
        assert vqa_score(prediction, human, version) == _official(version, prediction, human), (prediction, human)


WORDS = ["yes", "Yes", "YES", "no", "two", "Two", "2", "none", "0", "ten", "10", "dog", "dogs", "the", "a", "an",
         "dont", "don't", "Im", "isnt", "red", "white", "3.5", "1,000", "1000"]  # fmt: skip
MARKS = ["", "", "", ".", ",", "!", "?", "/", "-", "'", '"', "(", ")", ";", "..", " .", ". "]
SPACES = ["", "", "", " ", "  ", "\n", "\t", " \n"]


def random_answer(rng):
    words = [rng.choice(WORDS) + rng.choice(MARKS) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    return rng.choice(SPACES) + rng.choice([" ", " ", "/", "-"]).join(words) + rng.choice(SPACES)


def random_question(rng):
    """Ten answers drawn from a few variants (often all alike, as in VQA v2) and a prediction among them or not."""
    variants = [random_answer(rng) for _ in range(rng.choice([1, 1, 2, 3, 4]))]
    human = [rng.choice(variants) for _ in range(10)]
    prediction = rng.choice([*variants, random_answer(rng), rng.choice(variants).upper(), " " + variants[0]])
    return prediction, human


@pytest.mark.parametrize("version", list(VQA_EVAL))
def test_randomised_cases_equal_the_official_code(version):
    rng = random.Random(17)
    differ = 0
    for _ in range(1500):
        prediction, human = random_question(rng)
        assert vqa_score(prediction, human, version) == OFFICIAL[version](prediction, human), (prediction, human)
        differ += official_current(prediction, human) != official_2017(prediction, human)
    assert differ > 50  # the cases do tell the two versions apart


def _table(questions):
    rows = len(questions)
    return pa.table(
        {
            "question_id": list(range(rows)),
            "image_id": [1] * rows,
            "image": ["x.jpg"] * rows,
            "question": ["q?"] * rows,
            "answers": [human for _, human in questions],
            "answer_type": [["yes/no", "number", "other"][i % 3] for i in range(rows)],
            "question_type": ["q"] * rows,
            "multiple_choice_answer": [max(set(human), key=human.count) for _, human in questions],
        },
        schema=QA_SCHEMA,
    )


@pytest.fixture(scope="module")
def questions():
    rng = random.Random(5)
    return [random_question(rng) for _ in range(150)] + [(p, h) for p, h in HAND_PICKED if h]


@pytest.mark.parametrize("version", list(VQA_EVAL))
def test_soft_targets_are_the_official_score_of_every_vocabulary_answer(version, questions):
    task = VQATask(min_answer_count=1, vqa_eval=version)
    task.fit(_table(questions))
    targets = task.targets(_table(questions)).collate(list(range(len(questions))))
    for row, (_, human) in enumerate(questions):
        official = [OFFICIAL[version](answer, human) for answer in task.answers]
        assert targets.scores[row].tolist() == official, human


@pytest.mark.parametrize("version", list(VQA_EVAL))
def test_each_majority_answer_enters_the_vocabulary_in_its_best_scoring_spelling(version, questions):
    """Normalised, stripped or raw: the vocabulary's spelling of a question's majority answer scores what the best
    of them does (under the current rules always > 0: the evaluator compares the majority's own spelling)."""
    task = VQATask(min_answer_count=1, vqa_eval=version)
    table = _table(questions)
    task.fit(table)
    for majority, (_, human) in zip(table.column("multiple_choice_answer").to_pylist(), questions):
        spelling = task.rules.answer_class(majority, human)
        if not spelling:
            continue  # an empty answer is never a class
        assert spelling in task.answers
        majority = majority if len({a.strip() for a in human}) > 1 else human[0]
        oracle_normalised = EVALUATOR.processDigitArticle(EVALUATOR.processPunctuation(majority.strip()))
        best = max(OFFICIAL[version](s, human) for s in (oracle_normalised, majority.strip(), majority))
        assert OFFICIAL[version](spelling, human) == best, (majority, human)
        assert best > 0 or version == "2017"


def test_unanimous_answers_enter_the_current_vocabulary_as_written():
    table = _table([("", ["Yes"] * 10), ("", ["yes"] * 9 + ["no"]), ("", [" two\n"] * 10)])
    current, old = VQATask(min_answer_count=1), VQATask(min_answer_count=1, vqa_eval="2017")
    current.fit(table)
    old.fit(table)
    assert sorted(current.answers) == ["Yes", "two", "yes"] and sorted(old.answers) == ["2", "yes"]


@pytest.mark.parametrize("version", list(VQA_EVAL))
def test_logged_accuracy_equals_the_official_score_of_the_written_predictions(version, questions):
    task = VQATask(min_answer_count=1, vqa_eval=version)
    task.fit(_table(questions[:100]))  # answers of the other questions may be missing from the vocabulary
    targets = task.targets(_table(questions))
    metric, written, torch_gen = task.make_metric(), [], torch.Generator().manual_seed(0)
    for start in range(0, len(questions), 64):
        rows = list(range(start, min(start + 64, len(questions))))
        batch = batch_of(targets.collate(rows), len(rows))
        outputs = AnswerLogits(torch.randn(len(rows), len(task.answers), generator=torch_gen))
        task.update_metric(metric, outputs, batch)
        written += task.predictions(outputs, batch)
    per_question = [OFFICIAL[version](p["answer"], questions[p["question_id"]][1]) for p in written]
    logged = metric.compute()["acc"].item()
    assert logged == pytest.approx(sum(per_question) / len(per_question), abs=1e-12)
    assert round(100 * logged, 2) == round(100 * float(sum(per_question)) / len(per_question), 2)  # as printed


def test_a_bad_vqa_eval_value_is_one_line(tmp_path):
    result = cli_in_process("train", "task.vqa_eval=2021", cwd=tmp_path)
    assert_one_line_error(result, "task.vqa_eval=2021", "current", "2017")


def test_checkpoints_from_before_vqa_eval_keep_the_2017_rules():
    old = OmegaConf.load(REPO / "cmvl" / "conf" / "task" / "vqa.yaml")
    del old["vqa_eval"]
    multitask = OmegaConf.create({"_target_": "cmvl.tasks.multitask.MultiTask", "tasks": {"vqa": copy.deepcopy(old)}})
    caption = OmegaConf.load(REPO / "cmvl" / "conf" / "task" / "caption.yaml")
    new = OmegaConf.load(REPO / "cmvl" / "conf" / "task" / "vqa.yaml")
    for node in (old, multitask, caption, new):
        fill_vqa_eval_of_older_checkpoint(node)
    assert old.vqa_eval == "2017" and multitask.tasks.vqa.vqa_eval == "2017"
    assert "vqa_eval" not in caption and new.vqa_eval == "current"


def test_the_shapes_world_scores_alike_under_both_versions():
    """The default world's answers are canonical, and its variants ("Yes", "two", " yes", "yes.") never make up
    more than 2 of 10 answers: every vocabulary answer scores the same under both rules, so the default changes no
    shapes number."""
    rng = np.random.default_rng(0)
    canonical = {"yes/no": ["yes", "no"], "number": [str(n) for n in range(6)], "other": [*COLORS, *SHAPES]}
    pool = [answer for answers in canonical.values() for answer in answers]
    for answer_type, answers in canonical.items():
        for answer in answers:
            for _ in range(100):
                records, majority = annotate(Question("q?", "q", answer_type, answer), rng)
                human = [r["answer"] for r in records]
                assert majority == answer
                assert all(vqa_score(a, human, "current") == vqa_score(a, human, "2017") for a in pool)


def test_cmvl_eval_scores_an_older_checkpoint_by_the_2017_rules_unless_told_otherwise():
    from cmvl.config.compose import compose_config
    from cmvl.run import run_config

    saved = OmegaConf.to_container(compose_config([]))
    assert saved["task"]["vqa_eval"] == "current"
    del saved["task"]["vqa_eval"]  # as written before the key existed
    checkpoint = {"cmvl": {"config": saved}}
    assert run_config(checkpoint, []).task.vqa_eval == "2017"
    assert run_config(checkpoint, ["task.vqa_eval=current"]).task.vqa_eval == "current"

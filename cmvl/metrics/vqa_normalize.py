"""Answer normalisation and per-question scoring exactly as the official VQA evaluation does it.

Reference: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, in two versions (`VQA_EVAL`):

* ``current`` (commit a013f00, 2021, "Fixed processing answers bug", confirmed as intended in GT-Vision-Lab/VQA#14):
  the human answers and the prediction lose newlines/tabs and surrounding spaces; then, only when the ten answers
  are *not* all identical, both go through punctuation and digit/article/contraction processing. When all ten
  agree, the prediction must equal that answer character for character (``Yes`` does not match 10 × ``yes``).
* ``2017`` (the code from the VQA v2 release in 2017 until a013f00): the prediction always goes through
  newline/tab removal, ``strip``, punctuation and digit/article/contraction processing; the human answers only
  through punctuation processing, only when not unanimous, and are never stripped, lower-cased or digit-mapped.

Quirks of both, reproduced on purpose:

* the punctuation rule removes a mark outright when it touches a space (or when the text contains a
  ``digit,digit`` group) and replaces it by a space otherwise;
* the period rule is ``(?!<=\\d)(\\.)(?!\\d)`` – a look-*ahead* typo for a look-behind – called with
  ``re.UNICODE`` (= 32) in the ``count`` position, so at most 32 periods are removed; the official code is Python 2,
  where that pattern's ``\\d`` means ASCII digits only (hence ``re.ASCII`` here);
* the score of a prediction is the mean over the 10 leave-one-annotator-out subsets of
  ``min(1, #matches / 3)``, which gives 0, 0.3, 0.6, 0.9 or 1.0 for 0, 1, 2, 3, ≥4 matching annotators, summed in
  annotator order as the official loop does (so the floats are the same to the last bit).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from cmvl.errors import ConfigError

# The official contraction table (keys are the forms with the apostrophe missing).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)", re.ASCII)
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)  # the official call passes re.UNICODE as `count`


# Answers repeat heavily (a few hundred thousand distinct strings among VQA v2's 4.4 million human answers), so the
# pure string functions below remember their results: building a split's soft targets normalises every answer.
MEMO = lru_cache(maxsize=1 << 18)


@MEMO
def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words to digits, drop articles, contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def strip_answer(answer: str) -> str:
    """Newlines and tabs to spaces, then `strip` (both versions do this to the prediction, `current` to answers)."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


@MEMO
def normalize_prediction(answer: str) -> str:
    """The fully processed form of an answer: strip, punctuation, then digits/articles/contractions."""
    return process_digit_article(process_punctuation(strip_answer(answer)))


def normalize_answer(answer: str) -> str:
    """cmvl's canonical form of an answer it writes (majority answers, the 2017 vocabulary): the full processing."""
    return normalize_prediction(answer)


@dataclass(frozen=True)
class PreparedAnswers:
    """One question's human answers as the evaluator compares them, and whether it processed them (its case)."""

    answers: tuple[str, ...]
    processed: bool


def leave_one_out_score(prediction_form: str, prepared: PreparedAnswers) -> float:
    """Mean over the leave-one-annotator-out subsets of min(1, matches / 3), summed in annotator order."""
    answers = prepared.answers
    if not answers:
        return 0.0
    matches = sum(answer == prediction_form for answer in answers)
    total = 0.0
    for answer in answers:
        # Leaving out annotator i removes one match exactly when annotator i gave the predicted answer.
        total += min(1.0, (matches - (answer == prediction_form)) / 3)
    return total / len(answers)


class VQAEvalRules(ABC):
    """One version of the official evaluator's answer processing. A question falls in one of two cases, answers
    processed (they are not all alike) or not, and each case says what is compared for an answer and a prediction."""

    version: str

    @abstractmethod
    def processes(self, human_answers: Sequence[str]) -> bool:
        """Whether this version processes the human answers of this question (they are not unanimous)."""

    @abstractmethod
    def answer_form(self, answer: str, processed: bool) -> str:
        """What this version compares for one human answer of a question in case `processed`."""

    @abstractmethod
    def prediction_form(self, prediction: str, processed: bool) -> str:
        """What this version compares for a predicted answer on a question in case `processed`."""

    def prepare(self, human_answers: Sequence[str]) -> PreparedAnswers:
        """The human answers of one question as this version compares them."""
        processed = self.processes(human_answers)
        return PreparedAnswers(tuple(self.answer_form(answer, processed) for answer in human_answers), processed)

    def score(self, prediction: str, human_answers: Sequence[str]) -> float:
        """Official accuracy of one raw predicted answer against the raw human answers of one question."""
        prepared = self.prepare(human_answers)
        return leave_one_out_score(self.prediction_form(prediction, prepared.processed), prepared)

    def answer_class(self, majority: str, human_answers: Sequence[str] | None) -> str:
        """The answer cmvl learns and writes for a question with this majority answer: the first of its normalised,
        stripped and raw spellings that the evaluator matches with it (the normalised one when none does).

        Where the answers are compared unprocessed, the unanimous answer is the majority. Normalised where it can
        be, so spellings of one answer share a class; otherwise as written, e.g. "Yes" for 10 × "Yes" under the
        current rules (no processed spelling matches it) or 40 periods (processing removes at most 32 at a time).
        """
        normalized = normalize_answer(majority)
        if not human_answers:
            return normalized
        processed = self.processes(human_answers)
        majority = majority if processed else human_answers[0]
        target = self.answer_form(majority, processed)
        for spelling in (normalize_answer(majority), strip_answer(majority), majority):
            if self.prediction_form(spelling, processed) == target:
                return spelling
        return normalized


class CurrentVQAEval(VQAEvalRules):
    """GT-Vision-Lab/VQA since a013f00: answers and prediction stripped, then fully processed only when the
    stripped answers are not unanimous."""

    version = "current"

    def processes(self, human_answers: Sequence[str]) -> bool:
        return len({strip_answer(answer) for answer in human_answers}) > 1

    def answer_form(self, answer: str, processed: bool) -> str:
        return normalize_prediction(answer) if processed else strip_answer(answer)

    def prediction_form(self, prediction: str, processed: bool) -> str:
        return normalize_prediction(prediction) if processed else strip_answer(prediction)


class VQAEval2017(VQAEvalRules):
    """GT-Vision-Lab/VQA before a013f00: the prediction always fully processed; the raw answers only get
    punctuation processing, only when not unanimous."""

    version = "2017"

    def processes(self, human_answers: Sequence[str]) -> bool:
        return len(set(human_answers)) > 1

    def answer_form(self, answer: str, processed: bool) -> str:
        return process_punctuation(answer) if processed else answer

    def prediction_form(self, prediction: str, processed: bool) -> str:
        return normalize_prediction(prediction)


VQA_EVAL: dict[str, VQAEvalRules] = {rules.version: rules for rules in (CurrentVQAEval(), VQAEval2017())}
DEFAULT_VQA_EVAL = "current"
OLDER_CHECKPOINT_VQA_EVAL = "2017"  # what runs written before task.vqa_eval existed were scored by


def vqa_eval_rules(version: str) -> VQAEvalRules:
    """The rules of `task.vqa_eval=version`; a one-line error for any other value."""
    if version not in VQA_EVAL:
        raise ConfigError(f"task.vqa_eval={version}: choose one of {' | '.join(VQA_EVAL)}")
    return VQA_EVAL[version]


def vqa_score(prediction: str, human_answers: Sequence[str], version: str = DEFAULT_VQA_EVAL) -> float:
    """Official accuracy of one raw predicted answer against the raw human answers of one question."""
    return vqa_eval_rules(version).score(prediction, human_answers)


class VocabularyScorer:
    """Soft targets: the official score of writing each vocabulary answer, for one question at a time.

    Every vocabulary answer is looked up by the form the evaluator compares (processed or as written, the two
    cases of a question), so a target is exactly what the evaluator gives that answer string, including answers
    that only match after processing (``Yes`` on a question with 9 × ``yes`` + ``no``).
    """

    def __init__(self, rules: VQAEvalRules, answers: Sequence[str]) -> None:
        self.rules = rules
        self.by_form: dict[bool, dict[str, list[int]]] = {True: {}, False: {}}
        for processed, index in self.by_form.items():
            for j, answer in enumerate(answers):
                index.setdefault(rules.prediction_form(answer, processed), []).append(j)

    def scores(self, human_answers: Sequence[str]) -> dict[int, float]:
        """{vocabulary index: official score > 0} for one question."""
        prepared = self.rules.prepare(human_answers)
        index = self.by_form[prepared.processed]
        result = {}
        for form in dict.fromkeys(prepared.answers):
            score = leave_one_out_score(form, prepared)
            if score > 0:
                for j in index.get(form, ()):
                    result[j] = score
        return result

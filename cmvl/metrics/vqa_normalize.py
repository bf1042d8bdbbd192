"""Answer normalisation and per-question scoring exactly as the official VQA evaluation does it.

Reference: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (master). Its quirks are
reproduced on purpose, because published numbers come from that code:

* a *prediction* goes through newline/tab removal, ``strip``, punctuation processing, then digit/article/
  contraction processing;
* the *human answers* only go through punctuation processing, and only when the 10 answers are not all
  identical (they are never lower-cased or digit-mapped by the evaluator);
* the punctuation rule removes a mark outright when it touches a space (or when the text contains a
  ``digit,digit`` group) and replaces it by a space otherwise;
* the period rule is ``(?!<=\\d)(\\.)(?!\\d)`` – a look-*ahead* typo for a look-behind – called with
  ``re.UNICODE`` (= 32) in the ``count`` position, so at most 32 periods are removed;
* the score of a prediction is the mean over the 10 leave-one-annotator-out subsets of
  ``min(1, #matches / 3)``, which gives 0, 0.3, 0.6, 0.9 or 1.0 for 0, 1, 2, 3, ≥4 matching annotators.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

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
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
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


@MEMO
def normalize_prediction(answer: str) -> str:
    """What the official evaluator compares for a predicted answer."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def normalize_answer(answer: str) -> str:
    """The canonical form used for answer vocabularies: the prediction normalisation."""
    return normalize_prediction(answer)


def prepare_human_answers(answers: Sequence[str]) -> list[str]:
    """The human answers as the official evaluator compares them (punctuation only, only if not unanimous)."""
    if len(set(answers)) > 1:
        return [process_punctuation(answer) for answer in answers]
    return list(answers)


def vqa_score(prediction: str, human_answers: Sequence[str]) -> float:
    """Official accuracy of one raw predicted answer against the raw human answers of one question."""
    return score_normalized(normalize_prediction(prediction), prepare_human_answers(human_answers))


def score_normalized(prediction: str, prepared_answers: Sequence[str]) -> float:
    """Leave-one-annotator-out accuracy of an already normalised prediction against prepared human answers."""
    if not prepared_answers:
        return 0.0
    matches = sum(answer == prediction for answer in prepared_answers)
    total = 0.0
    for answer in prepared_answers:
        # Leaving out annotator i removes one match exactly when annotator i gave the predicted answer.
        others = matches - (answer == prediction)
        total += min(1.0, others / 3)
    return total / len(prepared_answers)


def soft_scores(prepared_answers: Sequence[str]) -> dict[str, float]:
    """Official score of predicting each human answer, keyed by its normalised (vocabulary) form.

    This is the soft training target: the score the evaluator would give if the model answered that class.
    """
    candidates = {normalize_answer(answer) for answer in prepared_answers}
    return {answer: score_normalized(answer, prepared_answers) for answer in candidates if answer}

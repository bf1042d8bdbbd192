"""Caption metrics computed the way the COCO caption evaluation (`pycocoevalcap`) computes them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys

import torch
from torchmetrics import Metric

# The punctuation the COCO evaluation's PTB tokenizer removes (pycocoevalcap/tokenizer/ptbtokenizer.py).
PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def java_available() -> bool:
    return shutil.which("java") is not None


def _fallback_tokenize(text: str) -> str:
    """Without Java: lower case, split words from punctuation the way PTB does for plain captions, drop the
    punctuation. Agrees with Stanford's PTBTokenizer on ordinary captions; differs on rare constructs."""
    text = text.lower().replace("\n", " ")
    text = re.sub(r"n't\b", " n't", text)  # PTB splits clitics off: "isn't" → "is n't", "dog's" → "dog 's"
    text = re.sub(r"'(s|re|ve|ll|d|m)\b", r" '\1", text)
    tokens = re.findall(r"n't|'[a-z]+|[a-z0-9]+|[^\sa-z0-9]", text)
    return " ".join(t for t in tokens if t not in PUNCTUATION)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the process's stderr file descriptor (what a Java subprocess inherits) for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    """Image id → captions, tokenised by the COCO evaluation's Stanford PTB tokenizer (Java) when available."""
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with contextlib.redirect_stdout(io.StringIO()), _quiet_stderr():  # Java prints a progress line per call
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [_fallback_tokenize(c) for c in v] for k, v in captions.items()}


CAPTION_SCORES = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")  # always computed, in this order


def caption_scores(
    candidates: dict[int, str], references: dict[int, list[str]], *, meteor: bool = False
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L, CIDEr-D (document frequencies from `references`, as in the COCO evaluation) and, if
    asked and Java is available, METEOR — over the images of `candidates` (image id → one caption)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = sorted(candidates)
    refs = tokenize({i: references[i] for i in ids})
    cands = tokenize({i: [candidates[i]] for i in ids})
    result: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its length statistics
        bleu, _ = Bleu(4).compute_score(refs, cands)
        result.update({f"bleu{n + 1}": float(v) for n, v in enumerate(bleu)})
        result["rouge_l"] = float(Rouge().compute_score(refs, cands)[0])
        result["cider"] = float(Cider().compute_score(refs, cands)[0])
        if meteor and java_available():
            from pycocoevalcap.meteor.meteor import Meteor

            scorer = Meteor()  # a Java subprocess, stopped when the scorer is garbage-collected
            result["meteor"] = float(scorer.compute_score(refs, cands)[0])
            del scorer
    return result


class CaptionScores(Metric):
    """Collects (image, generated caption, reference captions) records and scores them with `caption_scores`.

    Records travel between ranks as UTF-8 JSON bytes in tensors (torchmetrics gathers tensors only); an image
    that appears twice (a distributed sampler pads by repeating samples) is scored once.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, *, meteor: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.meteor = meteor
        self.add_state("payload", [], dist_reduce_fx="cat")  # uint8: the records' JSON, back to back
        self.add_state("lengths", [], dist_reduce_fx="cat")  # int64: byte length of each record

    def update(self, image_ids: list[int], captions: list[str], references: list[list[str]]) -> None:
        blobs = [
            json.dumps({"image_id": int(i), "caption": c, "references": list(r)}).encode()
            for i, c, r in zip(image_ids, captions, references)
        ]
        if not blobs:
            return
        self.payload.append(torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8).to(self.device))
        self.lengths.append(torch.tensor([len(b) for b in blobs], dtype=torch.int64, device=self.device))

    def records(self) -> list[dict]:
        if isinstance(self.payload, list) and not self.payload:
            return []
        payload = torch.cat(self.payload) if isinstance(self.payload, list) else self.payload
        lengths = torch.cat(self.lengths) if isinstance(self.lengths, list) else self.lengths
        data, records, start = payload.cpu().numpy().tobytes(), {}, 0
        for n in lengths.tolist():
            record = json.loads(data[start : start + n])
            records.setdefault(record["image_id"], record)
            start += n
        return [records[k] for k in sorted(records)]

    @property
    def names(self) -> list[str]:
        """The keys of `compute` (METEOR only when asked for and Java is installed)."""
        return [*CAPTION_SCORES, *(["meteor"] if self.meteor else [])]

    def compute(self) -> dict[str, torch.Tensor]:
        records = self.records()
        if not records:
            return {}
        scores = caption_scores(
            {r["image_id"]: r["caption"] for r in records},
            {r["image_id"]: r["references"] for r in records},
            meteor=self.meteor,
        )
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in scores.items()}

"""Tokenizers: built from the dataset's text with `tokenizers` components, or loaded from a pretrained model.

Either way the result is a `transformers.PreTrainedTokenizerFast`, serialised as JSON into the checkpoint so
that `cmvl eval` needs nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from cmvl.errors import DataError

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


class TrainedWordPiece:
    """A BERT-style WordPiece tokenizer whose vocabulary comes from the training split's text, deterministically.

    Vocabulary: the special tokens, every character seen (alone and as a `##` continuation, so any word can be
    spelled), then the most frequent whole words (ties by spelling) up to `vocab_size`. Normalisation,
    pre-tokenisation and greedy longest-match encoding are the `tokenizers` library's BERT components.
    (`tokenizers`' own WordPieceTrainer breaks ties between equally frequent merges in hash-map order, which
    changes from process to process: two runs with the same seed got different vocabularies, so no run could be
    repeated or compared bit for bit.)
    """

    def __init__(self, *, vocab_size: int = 2000, lowercase: bool = True) -> None:
        self.vocab_size = vocab_size
        self.lowercase = lowercase

    def build(self, texts: Iterable[str]) -> PreTrainedTokenizerFast:
        normalizer = normalizers.BertNormalizer(lowercase=self.lowercase)
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        specials = list(SPECIAL_TOKENS.values())
        chars = sorted({c for word in counts for c in word})
        vocab = dict.fromkeys([*specials, *chars, *(f"##{c}" for c in chars)])
        for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            if len(vocab) >= self.vocab_size:
                break
            vocab.setdefault(word)
        tok = Tokenizer(
            models.WordPiece(
                vocab={t: i for i, t in enumerate(vocab)},
                unk_token=SPECIAL_TOKENS["unk_token"],
                continuing_subword_prefix="##",
            )
        )
        tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return wrap_tokenizer(tok)


class PretrainedTokenizer:
    """The tokenizer that goes with a pretrained text model: `AutoTokenizer` from a local directory, a packaged
    model (`pkg://package/subdir`) or a hub name (the only case that may reach the network).

    Models without a padding token (GPT-2) pad with their end-of-text token.
    """

    def __init__(self, *, name: str) -> None:
        self.name = name

    def build(self, texts: Iterable[str]) -> PreTrainedTokenizerFast:
        from transformers import AutoTokenizer

        from cmvl.models.pretrained import resolve_pretrained
        from cmvl.models.remote_code import refuse_remote_code

        path = resolve_pretrained(self.name)
        refuse_remote_code(path, "text.tokenizer.name")
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, trust_remote_code=False)
        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise DataError(f"text tokenizer {self.name}: no fast (Rust) tokenizer available")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer


def wrap_tokenizer(tok: Tokenizer, special_tokens: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **(special_tokens or SPECIAL_TOKENS))


def tokenizer_to_state(tokenizer: PreTrainedTokenizerFast) -> dict[str, object]:
    """The whole tokenizer (vocabulary, normaliser, post-processor) as JSON plus its special-token roles."""
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return {"tokenizer_json": tokenizer.backend_tokenizer.to_str(), "special_tokens": special}


def tokenizer_from_state(state: str | dict) -> PreTrainedTokenizerFast:
    if isinstance(state, str):  # checkpoints written before special-token roles were stored: WordPiece only
        return wrap_tokenizer(Tokenizer.from_str(state))
    return wrap_tokenizer(Tokenizer.from_str(state["tokenizer_json"]), state["special_tokens"])


class TokenizedTexts:
    """A split's texts tokenised once (truncated, not padded), as one flat id array plus row offsets: no per-row
    Python objects (forked loader workers share the arrays), and no tokenising in the loop over batches."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int) -> None:
        rows = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
        self.offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=self.offsets[1:])
        self.ids = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(self.offsets[-1]))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pad_left = tokenizer.padding_side == "left"

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def pad(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """`input_ids` and `attention_mask` (B×L, L = the longest row), padded the way the tokenizer pads."""
        length = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, row in enumerate(rows):
            span = slice(length - len(row), length) if self.pad_left else slice(0, len(row))
            input_ids[b, span] = torch.from_numpy(row)
            attention_mask[b, span] = 1
        return input_ids, attention_mask

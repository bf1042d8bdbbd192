"""Tokenizers: trained on the dataset's text with `tokenizers`, or loaded from a pretrained model.

Either way the result is a `transformers.PreTrainedTokenizerFast`, serialised as JSON into the checkpoint so
that `cmvl eval` needs nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


class TrainedWordPiece:
    """A BERT-style WordPiece tokenizer trained on the training split's text."""

    def __init__(self, *, vocab_size: int = 2000, lowercase: bool = True) -> None:
        self.vocab_size = vocab_size
        self.lowercase = lowercase

    def build(self, texts: Iterable[str]) -> PreTrainedTokenizerFast:
        tok = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=self.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=self.vocab_size, special_tokens=list(SPECIAL_TOKENS.values()))
        tok.train_from_iterator(texts, trainer=trainer)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tokenizer_to_state(tokenizer: PreTrainedTokenizerFast) -> str:
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_state(state: str) -> PreTrainedTokenizerFast:
    return wrap_tokenizer(Tokenizer.from_str(state))

"""Tokenizers: built from the dataset's text with `tokenizers` components, or loaded from a pretrained model.

Either way the result is a `transformers.PreTrainedTokenizerFast`, serialised as JSON into the checkpoint so
that `cmvl eval` needs nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

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


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tokenizer_to_state(tokenizer: PreTrainedTokenizerFast) -> str:
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_state(state: str) -> PreTrainedTokenizerFast:
    return wrap_tokenizer(Tokenizer.from_str(state))

"""What a task that writes text needs from the run's tokenizer: BOS/EOS framing, beam search, decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from cmvl.batch import TensorRecord
from cmvl.models.caption_decoder import TextDecoder
from cmvl.models.tokens import Tokens

IGNORE = -100  # label of positions the loss skips (padding)


@dataclass
class TeacherForced(TensorRecord):
    """Training outputs of a text decoder: the logits of every next token and the tokens they should predict."""

    logits: torch.Tensor  # B×(T-1)×V
    labels: torch.Tensor  # B×(T-1) int64, IGNORE at padding


@dataclass
class GeneratedText(TensorRecord):
    """Evaluation outputs of a text decoder: the written token ids (BOS … EOS, then PAD)."""

    tokens: torch.Tensor  # B×T int64


class TextFraming:
    """BOS/EOS/PAD ids of a tokenizer. BERT-style tokenizers frame a text as [CLS] … [SEP] themselves (`framed`);
    causal-LM ones (GPT-2) add nothing and use one end-of-text token for both ends."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.bos_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        self.eos_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        probe = tokenizer("a")["input_ids"]
        self.framed = probe[0] == self.bos_id and probe[-1] == self.eos_id

    def sequences(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[BOS] text [EOS], right-padded with PAD (adding BOS/EOS where the tokenizer does not), and the mask of
        real positions. Real positions are told by the mask, not by the ids: GPT-2 pads with its end-of-text token,
        which is also its BOS and EOS."""
        order = (attention_mask == 0).long().argsort(dim=1, stable=True)  # left-padded rows: real tokens first
        input_ids, real = input_ids.gather(1, order), attention_mask.gather(1, order).bool()
        if self.framed:
            return input_ids.masked_fill(~real, self.pad_id), real
        batch, length = input_ids.shape
        rows = torch.arange(batch, device=input_ids.device)
        sequences = torch.full((batch, length + 2), self.pad_id, dtype=input_ids.dtype, device=input_ids.device)
        sequences[:, 0] = self.bos_id
        sequences[:, 1:-1] = input_ids.masked_fill(~real, self.pad_id)
        lengths = real.sum(1)
        sequences[rows, lengths + 1] = self.eos_id
        positions = torch.arange(length + 2, device=input_ids.device)
        return sequences, positions[None, :] < (lengths + 2)[:, None]

    def teacher_forcing(
        self, decoder: TextDecoder, memory: Tokens, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> TeacherForced:
        """Logits for every next token of the framed texts, and the tokens they should predict (IGNORE: padding)."""
        sequences, real = self.sequences(input_ids, attention_mask)
        sequences, real = sequences[:, : decoder.max_positions], real[:, : decoder.max_positions]
        logits = decoder(sequences[:, :-1], memory, padding=~real[:, :-1])
        return TeacherForced(logits, sequences[:, 1:].masked_fill(~real[:, 1:], IGNORE))

    def next_token_loss(self, outputs: TeacherForced, *, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy of `teacher_forcing`'s logits against its labels, padding ignored."""
        logits, labels = outputs.logits.float(), outputs.labels
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE,
            label_smoothing=label_smoothing,
        )

    def generate(
        self, decoder: TextDecoder, memory: Tokens, *, max_length: int, beam_size: int, length_penalty: float
    ) -> GeneratedText:
        return GeneratedText(
            decoder.generate(
                memory,
                bos_id=self.bos_id,
                eos_id=self.eos_id,
                pad_id=self.pad_id,
                max_length=max_length,
                beam_size=beam_size,
                length_penalty=length_penalty,
            )
        )

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)]

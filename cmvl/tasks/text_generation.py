"""What a task that writes text needs from the run's tokenizer: BOS/EOS framing, beam search, decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from cmvl.models.caption_decoder import CaptionDecoder
from cmvl.models.tokens import Tokens


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

    def sequences(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[BOS] text [EOS] padded with PAD, from tokenised texts (adding BOS/EOS where the tokenizer does not)."""
        if self.framed:
            return input_ids.masked_fill(attention_mask == 0, self.pad_id)
        batch, length = input_ids.shape
        sequences = torch.full((batch, length + 2), self.pad_id, dtype=input_ids.dtype, device=input_ids.device)
        sequences[:, 0] = self.bos_id
        sequences[:, 1:-1] = input_ids.masked_fill(attention_mask == 0, self.pad_id)
        sequences[torch.arange(batch, device=input_ids.device), attention_mask.sum(1) + 1] = self.eos_id
        return sequences

    def teacher_forcing(
        self, decoder: CaptionDecoder, memory: Tokens, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Logits for every next token of the framed texts, and the tokens they should predict (PAD: ignore)."""
        sequences = self.sequences(input_ids, attention_mask)[:, : decoder.max_positions]
        inputs = sequences[:, :-1]
        return {"logits": decoder(inputs, memory, padding=inputs == self.pad_id), "labels": sequences[:, 1:]}

    def next_token_loss(self, outputs: dict[str, torch.Tensor], *, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy of `teacher_forcing`'s logits against its labels, padding ignored."""
        logits, labels = outputs["logits"].float(), outputs["labels"]
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=self.pad_id,
            label_smoothing=label_smoothing,
        )

    def generate(
        self, decoder: CaptionDecoder, memory: Tokens, *, max_length: int, beam_size: int, length_penalty: float
    ) -> torch.Tensor:
        return decoder.generate(
            memory,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            max_length=max_length,
            beam_size=beam_size,
            length_penalty=length_penalty,
        )

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)]

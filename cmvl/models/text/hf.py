"""Any Hugging Face text model (`AutoModel`) as a text encoder: BERT, DistilBERT, RoBERTa, GPT-2, T5's encoder…"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from cmvl.errors import ConfigError
from cmvl.models.freeze import apply_freeze
from cmvl.models.lora import apply_lora
from cmvl.models.remote_code import load_auto_model
from cmvl.models.tokens import Tokens


class HFTextEncoder(nn.Module):
    """`AutoModel` from `name` (local directory, `pkg://package/subdir` or hub name); encoder-decoder models (T5)
    contribute their encoder. `pretrained: false` builds the same architecture from its config, randomly
    initialised. Tokens = the last hidden states, mask = the attention mask."""

    def __init__(
        self,
        *,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        pretrained: bool = True,
        freeze: str | int = "none",
        max_length: int = 32,
        lora: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        model = load_auto_model(name, pretrained=pretrained, key="text.encoder.name")
        if model.config.is_encoder_decoder:
            model = model.get_encoder()
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise ConfigError(
                f"text: tokenizer of {name} has {len(tokenizer)} tokens, more than the model's embeddings"
            )
        self.model = model
        config = model.config
        self.out_dim = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or config.n_embd
        self.max_length = max_length
        apply_freeze(model, freeze, "text.encoder")
        apply_lora(model, lora, "text.lora")  # adapters (text.lora.r): the other weights stop learning

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tokens:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return Tokens(hidden, attention_mask.bool())

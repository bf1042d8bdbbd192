"""A small randomly initialised BERT (Hugging Face `BertModel`) for CPU runs and tests."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel, PreTrainedTokenizerBase

from cmvl.models.tokens import Tokens


class TinyBertEncoder(nn.Module):
    """`BertModel` built from a config (no download); vocabulary size and padding come from the tokenizer."""

    def __init__(
        self,
        *,
        tokenizer: PreTrainedTokenizerBase,
        hidden_size: int = 128,
        layers: int = 2,
        heads: int = 4,
        intermediate_size: int = 256,
        max_length: int = 32,
        dropout: float = 0.1,
        freeze: str = "none",
    ) -> None:
        super().__init__()
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_length,
            pad_token_id=tokenizer.pad_token_id,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        self.out_dim = hidden_size
        if freeze == "all":
            self.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tokens:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return Tokens(hidden, attention_mask.bool())

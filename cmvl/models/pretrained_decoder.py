"""A pretrained Hugging Face causal LM (GPT-2, a BERT-family decoder, Llama, …) as the caption decoder, conditioned
on the image's vision tokens by new cross-attention layers or as a prefix of projected vision tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from cmvl.errors import ConfigError
from cmvl.models.caption_decoder import TextDecoder
from cmvl.models.freeze import apply_freeze
from cmvl.models.lora import apply_lora
from cmvl.models.pretrained import resolve_pretrained
from cmvl.models.remote_code import refuse_remote_code, refuse_remote_config
from cmvl.models.tokens import Tokens

CONDITIONINGS = ("cross_attention", "prefix")
NEW_CROSS_ATTENTION = ("crossattention", "ln_cross_attn")  # module names transformers gives added cross-attention


def lm_config(path: str, conditioning: str) -> PretrainedConfig:
    """The LM's config, set up as a decoder with cross-attention layers where `conditioning` needs them."""
    refuse_remote_code(path, "task.lm")
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    if conditioning == "cross_attention":
        config.is_decoder = True  # BERT-family models are encoders unless told otherwise
        config.add_cross_attention = True
    return config


def build_lm(path: str, config: PretrainedConfig, *, pretrained: bool) -> PreTrainedModel:
    """`AutoModelForCausalLM` with `config`: the saved weights when `pretrained` (new cross-attention layers are
    randomly initialised), else random init. A model type without a causal-LM head is a config error."""
    try:
        if pretrained:
            return AutoModelForCausalLM.from_pretrained(path, config=config, trust_remote_code=False)
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except ValueError as err:  # "Unrecognized configuration class … for this kind of AutoModel"
        raise ConfigError(f"task.lm={path}: {config.model_type} has no causal-LM head ({err.args[0][:80]}…)") from None


class PretrainedLMDecoder(TextDecoder):
    """The LM reads the caption; the image enters either through cross-attention layers added to every block
    (`cross_attention`: GPT-2, BERT/RoBERTa/… as decoders) or as a prefix of vision tokens projected to the LM's
    width (`prefix`: any causal LM). Its vocabulary must be the run's tokenizer's (the task checks). Decoding
    reuses the LM's key/value cache: each beam-search step reads one new token."""

    def __init__(
        self,
        *,
        lm: PreTrainedModel,
        dim: int,
        conditioning: str,
        vocab_size: int,
        freeze: str | int = "none",
        lora: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        config = lm.config
        name = config.name_or_path or config.model_type
        has_cross_attention = any(n.endswith("crossattention") for n, _ in lm.named_modules())
        if conditioning == "cross_attention" and not has_cross_attention:
            raise ConfigError(
                f"task.lm={name}: {config.model_type} has no cross-attention layers to add; use "
                "task.lm_conditioning=prefix"
            )
        if vocab_size > lm.get_input_embeddings().num_embeddings:
            raise ConfigError(f"task.lm={name}: the tokenizer has {vocab_size} tokens, more than the LM's embeddings")
        self.lm, self.conditioning = lm, conditioning
        width = lm.get_input_embeddings().embedding_dim
        self.memory_proj = nn.Sequential(nn.Linear(dim, width), nn.LayerNorm(width))
        self.max_positions = int(getattr(config, "max_position_embeddings", None) or 2048)
        self.vocab_size = vocab_size
        apply_freeze(lm, freeze, "task.lm")
        apply_lora(lm, lora, "task.lm_lora")  # adapters (task.lm_lora.r): the LM's other weights stop learning
        for name, module in lm.named_modules():  # the new cross-attention layers learn even in frozen blocks
            if name.rsplit(".", 1)[-1] in NEW_CROSS_ATTENTION:
                module.requires_grad_(True)

    def _inputs(self, tokens: torch.Tensor, memory: Tokens, padding: torch.Tensor | None) -> dict[str, Any]:
        """Keyword arguments of the LM's forward for a whole prefix `tokens`."""
        visual = self.memory_proj(memory.feats)
        text_mask = torch.ones_like(tokens) if padding is None else (~padding).long()
        if self.conditioning == "cross_attention":
            return {
                "input_ids": tokens,
                "attention_mask": text_mask,
                "encoder_hidden_states": visual,
                "encoder_attention_mask": memory.mask.long(),
            }
        if visual.shape[1] + tokens.shape[1] > self.max_positions:
            raise ConfigError(
                f"task.lm_conditioning=prefix: {visual.shape[1]} vision tokens + {tokens.shape[1]} text tokens exceed "
                f"the LM's {self.max_positions} positions"
            )
        embeds = self.lm.get_input_embeddings()(tokens)
        return {
            "inputs_embeds": torch.cat([visual.to(embeds.dtype), embeds], dim=1),
            "attention_mask": torch.cat([memory.mask.long(), text_mask], dim=1),
        }

    def _logits(self, logits: torch.Tensor, length: int) -> torch.Tensor:
        return logits[:, -length:, : self.vocab_size]  # the text positions; ids the tokenizer never writes dropped

    def forward(self, tokens: torch.Tensor, memory: Tokens, padding: torch.Tensor | None = None) -> torch.Tensor:
        out = self.lm(**self._inputs(tokens, memory, padding), use_cache=False)
        return self._logits(out.logits, tokens.shape[1])

    def longest_output(self, memory: Tokens) -> int:
        prefix = memory.feats.shape[1] if self.conditioning == "prefix" else 0
        return self.max_positions - prefix - 1

    def step(self, sequences: torch.Tensor, memory: Tokens, state: Any) -> tuple[torch.Tensor, Any]:
        """The first step reads the whole prefix; later ones only the newest token, with the LM's cache. The state
        is (cache, the projected memory the cross-attention reads: projected once per decoding)."""
        if state is None:
            inputs = self._inputs(sequences, memory, None)
            out = self.lm(**inputs, use_cache=True)
            return self._logits(out.logits, 1)[:, -1], (out.past_key_values, inputs.get("encoder_hidden_states"))
        cache, visual = state
        newest = sequences[:, -1:]
        if self.conditioning == "cross_attention":  # its keys/values are cached; the LM still takes the memory
            inputs = {"encoder_hidden_states": visual, "encoder_attention_mask": memory.mask.long()}
        else:  # the mask spans the vision prefix, the cached tokens and the new one
            inputs = {"attention_mask": torch.cat([memory.mask.long(), torch.ones_like(sequences)], dim=1)}
        out = self.lm(input_ids=newest, **inputs, past_key_values=cache, use_cache=True)
        return self._logits(out.logits, 1)[:, -1], (out.past_key_values, visual)

    def reorder(self, state: Any, source: torch.Tensor) -> Any:
        # Beams only move within their image's group, whose memory rows are equal: only the cache moves.
        cache, visual = state
        cache.reorder_cache(source)
        return cache, visual


class PretrainedLM:
    """Which LM a caption task decodes with, and how it is rebuilt.

    Training: `name` (null = the run's text model, whose tokenizer the run uses) is loaded with its weights. The
    LM's config goes into the checkpoint's task state, so evaluation and resume rebuild the same architecture from
    it and take the weights from the checkpoint: no download, no hub access.
    """

    def __init__(
        self,
        name: str | None,
        conditioning: str,
        *,
        pretrained: bool,
        freeze: str | int,
        lora: dict[str, Any] | None = None,
    ) -> None:
        if conditioning not in CONDITIONINGS:
            raise ConfigError(f"task.lm_conditioning={conditioning}: choose one of {', '.join(CONDITIONINGS)}")
        self.name, self.conditioning, self.pretrained, self.freeze = name, conditioning, pretrained, freeze
        self.lora = lora
        self.path: str | None = None  # where the weights are read from (training only)
        self.config: PretrainedConfig | None = None

    def bind_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if self.config is not None:  # restored from a checkpoint
            return
        text_model = tokenizer.name_or_path
        if self.name is None and not text_model:
            raise ConfigError(
                "task.decoder=pretrained: the run's tokenizer was trained on the data, so it is no LM's; pick the "
                "LM's as the text model (text=gpt2, or text=hf text.encoder.name=<the LM>)"
            )
        self.path = resolve_pretrained(self.name) if self.name is not None else text_model
        if self.path != text_model:
            refuse_remote_code(self.path, "task.lm")
            own = AutoTokenizer.from_pretrained(self.path, trust_remote_code=False)
            if own.get_vocab() != tokenizer.get_vocab():
                raise ConfigError(
                    f"task.lm={self.name}: its vocabulary is not the run's tokenizer's (text model: "
                    f"{text_model or 'none, trained on the data'}); set text= to the same model"
                )
        self.config = lm_config(self.path, self.conditioning)

    def state_dict(self) -> dict[str, Any]:
        assert self.config is not None, "bind_tokenizer() first"
        return {"config": self.config.to_dict(), "conditioning": self.conditioning}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        config = dict(state["config"])
        refuse_remote_config(config, "the checkpoint's task.lm config")  # a checkpoint is a file, not a choice
        self.config = AutoConfig.for_model(config.pop("model_type"), **config)
        self.conditioning, self.path = state["conditioning"], None

    def build_decoder(self, dim: int, *, vocab_size: int) -> PretrainedLMDecoder:
        assert self.config is not None, "bind_tokenizer() first"
        lm = build_lm(self.path or "", self.config, pretrained=self.pretrained and self.path is not None)
        return PretrainedLMDecoder(
            lm=lm, dim=dim, conditioning=self.conditioning, vocab_size=vocab_size, freeze=self.freeze, lora=self.lora
        )

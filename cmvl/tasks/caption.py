"""Image captioning: a transformer (or LSTM) decoder over the image's tokens, scored like the COCO caption
evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from cmvl.batch import Batch, TensorRecord
from cmvl.errors import ConfigError
from cmvl.metrics.caption import CaptionScores
from cmvl.models.caption_decoder import CaptionDecoder
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.lstm_decoder import LSTMCaptionDecoder, LSTMOptions, doubly_stochastic_penalty
from cmvl.models.pretrained_decoder import PretrainedLM
from cmvl.models.tokens import Tokens
from cmvl.tasks.base import EMPTY, SampleNote, SplitTargets, Task
from cmvl.tasks.prediction import CaptionResult, PredictOptions
from cmvl.tasks.text_generation import IGNORE, GeneratedText, TeacherForced, TextFraming

METEOR_CHOICES = ("eval", "always", "never")
DECODERS = ("transformer", "pretrained", "lstm")


@dataclass
class AttendedTeacherForced(TeacherForced):
    """Teacher forcing through a soft-attention LSTM: also its attention weights, for the regulariser."""

    attention: torch.Tensor | None = None  # B×(T-1)×N
    memory_mask: torch.Tensor | None = None  # B×N


@dataclass
class CaptionTargetsBatch(TensorRecord):
    image_id: torch.Tensor  # B int64
    references: list[list[str]] | None = None  # every reference caption of each image (evaluation rows)


@dataclass
class CaptionTargets(SplitTargets):
    image_id: np.ndarray  # int64 [N]
    references: pa.ChunkedArray | None  # list<string> [N] on evaluation rows (one per image), else None
    annotated: bool = True

    def collate(self, indices: list[int]) -> CaptionTargetsBatch:
        idx = np.asarray(indices)
        references = None if self.references is None else self.references.take(pa.array(idx)).to_pylist()
        return CaptionTargetsBatch(torch.from_numpy(self.image_id[idx]), references)


def one_row_per_image(table: pa.Table) -> pa.Table:
    """Captions grouped by image: `image_id`, `image`, `references` (all its captions), in first-seen order."""
    grouped = table.group_by(["image_id", "image"], use_threads=False).aggregate([("caption", "list")])
    return grouped.rename_columns({"caption_list": "references"})


class CaptionTask(Task):
    """Teacher-forced cross-entropy with label smoothing for training; greedy or beam-search decoding for
    validation and evaluation, scored with BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR in `cmvl eval`, where Java is
    available). The decoder (`transformer`: trained from scratch; `pretrained`: a Hugging Face causal LM; `lstm`:
    Show and Tell, or with `lstm.attention=soft` Show, Attend and Tell and its doubly-stochastic attention
    regulariser) reads the image's projected vision tokens; the tokenizer is the run's."""

    name = "caption"
    table_kind = "captions"
    epochs = 3  # default budget (trainer.max_epochs=null), measured in the README
    monitor_key = "cider"
    parts = frozenset({"vision"})  # the decoder reads the image tokens; it embeds its own text

    def __init__(
        self,
        *,
        layers: int = 2,
        heads: int = 4,
        max_length: int = 20,
        label_smoothing: float = 0.1,
        beam_size: int = 3,
        length_penalty: float = 0.0,
        meteor: str = "eval",
        text_max_length: int = 32,
        dropout: float = 0.0,
        decoder: str = "transformer",
        lm: str | None = None,
        lm_conditioning: str = "cross_attention",
        lm_pretrained: bool = True,
        lm_freeze: str | int = "none",
        lm_lora: dict[str, Any] | None = None,
        lstm: dict[str, Any] | None = None,
    ) -> None:
        if meteor not in METEOR_CHOICES:
            raise ConfigError(f"task.meteor={meteor}: choose one of {', '.join(METEOR_CHOICES)}")
        if decoder not in DECODERS:
            raise ConfigError(f"task.decoder={decoder}: choose one of {', '.join(DECODERS)}")
        self.decoder = decoder
        self.lstm = LSTMOptions.from_config(lstm)
        self.lm = PretrainedLM(lm, lm_conditioning, pretrained=lm_pretrained, freeze=lm_freeze, lora=lm_lora)
        self.layers, self.heads, self.max_length = layers, heads, max_length
        self.label_smoothing, self.beam_size, self.length_penalty = label_smoothing, beam_size, length_penalty
        self.meteor, self.dropout = meteor, dropout
        self.max_positions = max(max_length, text_max_length) + 2  # BOS/EOS added to the longest text
        self.framing: TextFraming | None = None  # from the run's tokenizer (bind_tokenizer)

    def bind_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self.framing = TextFraming(tokenizer)
        if self.decoder == "pretrained":
            self.lm.bind_tokenizer(tokenizer)

    def state_dict(self) -> dict[str, Any]:
        return {"lm": self.lm.state_dict()} if self.decoder == "pretrained" else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lm" in state:
            self.lm.load_state_dict(state["lm"])

    def rows(self, table: pa.Table, *, train: bool) -> pa.Table:
        return table if train else one_row_per_image(table)

    def texts(self, table: pa.Table) -> list[str] | None:
        if "references" in table.column_names:
            return None  # evaluation rows: the caption is generated, there is no text input
        return table.column("caption").to_pylist()  # training: the caption to write, teacher-forced

    def targets(self, table: pa.Table) -> CaptionTargets:
        references = table.column("references") if "references" in table.column_names else None
        return CaptionTargets(image_id=table.column("image_id").to_numpy().astype(np.int64), references=references)

    def build_head(self, dim: int) -> nn.Module:
        assert self.framing is not None, "bind_tokenizer() first"
        if self.decoder == "pretrained":
            return self.lm.build_decoder(dim, vocab_size=len(self.framing.tokenizer))
        if self.decoder == "lstm":
            return LSTMCaptionDecoder(
                vocab_size=len(self.framing.tokenizer),
                dim=dim,
                hidden=self.lstm.hidden or dim,
                max_positions=self.max_positions,
                dropout=self.dropout,
                attention=self.lstm.attention,
            )
        return CaptionDecoder(
            vocab_size=len(self.framing.tokenizer),
            dim=dim,
            layers=self.layers,
            heads=self.heads,
            max_positions=self.max_positions,
            dropout=self.dropout,
        )

    def _memory(self, model: VisionLanguageModel, batch: Batch) -> Tokens:
        return model.encode_images(batch.images, batch.image_index)

    def forward(self, model: VisionLanguageModel, batch: Batch) -> TeacherForced:
        memory, decoder = self._memory(model, batch), model.heads[self.name]
        outputs = self.framing.teacher_forcing(decoder, memory, batch.input_ids, batch.attention_mask)
        if not isinstance(decoder, LSTMCaptionDecoder) or decoder.attention != "soft":
            return outputs
        attention, decoder.last_attention = decoder.last_attention, None  # the decoder keeps no graph
        return AttendedTeacherForced(outputs.logits, outputs.labels, attention, memory.mask)

    def eval_forward(self, model: VisionLanguageModel, batch: Batch) -> GeneratedText:
        return self._write_captions(model, batch, self.beam_size)

    def _write_captions(self, model: VisionLanguageModel, batch: Batch, beam_size: int) -> GeneratedText:
        return self.framing.generate(
            model.heads[self.name],
            self._memory(model, batch),
            max_length=self.max_length,
            beam_size=beam_size,
            length_penalty=self.length_penalty,
        )

    # -- prediction on a user's inputs (cmvl/tasks/prediction.py): image only --------------------------------
    def predict_forward(self, model: VisionLanguageModel, batch: Batch, options: PredictOptions) -> GeneratedText:
        return self._write_captions(model, batch, options.beam_size or self.beam_size)

    def predict_results(self, outputs: GeneratedText, batch: Batch, options: PredictOptions) -> list[CaptionResult]:
        return [CaptionResult(self.name, caption) for caption in self.framing.decode(outputs.tokens)]

    def loss(self, outputs: TeacherForced, batch: Batch) -> torch.Tensor:
        loss = self.framing.next_token_loss(outputs, label_smoothing=self.label_smoothing)
        if isinstance(outputs, AttendedTeacherForced) and self.lstm.attention_weight:
            penalty = doubly_stochastic_penalty(outputs.attention, outputs.labels != IGNORE, outputs.memory_mask)
            loss = loss + self.lstm.attention_weight * penalty
        return loss

    def make_metric(self) -> CaptionScores:
        return CaptionScores(meteor=self.meteor == "always")

    def make_eval_metric(self) -> CaptionScores:
        return CaptionScores(meteor=self.meteor in ("eval", "always"))

    def update_metric(self, metric: CaptionScores, outputs: GeneratedText, batch: Batch) -> None:
        targets: CaptionTargetsBatch = batch.targets
        metric.update(targets.image_id.tolist(), self.framing.decode(outputs.tokens), targets.references)

    def sample_notes(self, outputs: GeneratedText, batch: Batch, count: int) -> list[SampleNote]:
        captions = self.framing.decode(outputs.tokens[:count])
        references = batch.targets.references
        return [
            SampleNote(int(batch.image_index[i]), [f"pred: {c or EMPTY}", f"ref: {references[i][0] or EMPTY}"])
            for i, c in enumerate(captions)
        ]

    def predictions(self, outputs: GeneratedText, batch: Batch) -> list[dict[str, Any]]:
        return [
            {"image_id": int(i), "caption": c}
            for i, c in zip(batch.targets.image_id.tolist(), self.framing.decode(outputs.tokens))
        ]

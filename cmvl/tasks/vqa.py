"""Visual question answering as classification over an answer vocabulary, scored like the official evaluation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from transformers import PreTrainedTokenizerFast

from cmvl.batch import Batch, TensorRecord
from cmvl.errors import ConfigError, DataError
from cmvl.metrics.vqa_accuracy import VQAAccuracy, answer_type_index
from cmvl.metrics.vqa_normalize import (
    DEFAULT_VQA_EVAL,
    OLDER_CHECKPOINT_VQA_EVAL,
    VocabularyScorer,
    vqa_eval_rules,
)
from cmvl.models.caption_decoder import CaptionDecoder
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.fusion.base import mlp
from cmvl.models.tokens import Tokens
from cmvl.tasks.base import SampleNote, SplitTargets, Task
from cmvl.tasks.prediction import AnswerResult, PredictOptions, ScoredLabel, top_scored
from cmvl.tasks.text_generation import GeneratedText, TeacherForced, TextFraming

ANSWER_MODES = ("classify", "generate")


@dataclass
class VQATargetsBatch(TensorRecord):
    """A batch's VQA targets: the official score of every vocabulary answer for each question (dense B×A) and, in
    generative mode on an annotated split, the answer to write (tokenised) and the ten human answers."""

    question_id: torch.Tensor  # B int64
    answer_type: torch.Tensor  # B int64, index into ANSWER_TYPES or -1
    scores: torch.Tensor  # B×A float64: the official score of predicting each vocabulary answer
    answer_ids: torch.Tensor | None = None  # B×L int64: the majority answer, tokenised (generative mode)
    answer_mask: torch.Tensor | None = None  # B×L int64
    human_answers: list[list[str]] | None = None  # the ten answers of each question (generative mode)


@dataclass
class AnswerLogits(TensorRecord):
    """Classifier outputs: one logit per vocabulary answer."""

    logits: torch.Tensor  # B×A


@dataclass
class VQATargets(SplitTargets):
    """Sparse soft targets: question i has answers `answer_idx[offsets[i]:offsets[i+1]]` with their scores.

    A score is exactly the official accuracy of predicting that vocabulary answer, so the accuracy of an
    arg-max prediction is read off the dense target row on the device, with no string work in the loop.
    """

    question_id: np.ndarray  # int64 [Q]
    answer_type: np.ndarray  # int64 [Q], index into ANSWER_TYPES or -1
    offsets: np.ndarray  # int64 [Q+1]
    answer_idx: np.ndarray  # int64 [nnz]
    answer_score: np.ndarray  # float64 [nnz]: the official score to the last bit (the metric reads it)
    num_answers: int
    annotated: bool
    # Generative mode: the answer to write (the majority answer's vocabulary form), tokenised here, and the ten
    # human answers it is scored against.
    answer_text: pa.ChunkedArray | None = None
    human_answers: pa.ChunkedArray | None = None
    tokenizer: PreTrainedTokenizerFast | None = None
    answer_max_length: int = 8

    def collate(self, indices: list[int]) -> VQATargetsBatch:
        idx = np.asarray(indices)
        dense = np.zeros((len(idx), self.num_answers), dtype=np.float64)
        for row, i in enumerate(idx):
            start, end = self.offsets[i], self.offsets[i + 1]
            dense[row, self.answer_idx[start:end]] = self.answer_score[start:end]
        targets = VQATargetsBatch(
            question_id=torch.from_numpy(self.question_id[idx]),
            answer_type=torch.from_numpy(self.answer_type[idx]),
            scores=torch.from_numpy(dense),
        )
        if self.tokenizer is not None and self.annotated:
            rows = pa.array(idx)
            answers = [a or "" for a in self.answer_text.take(rows).to_pylist()]
            encoded = self.tokenizer(
                answers, padding=True, truncation=True, max_length=self.answer_max_length, return_tensors="pt"
            )
            targets.answer_ids, targets.answer_mask = encoded["input_ids"], encoded["attention_mask"]
            targets.human_answers = self.human_answers.take(rows).to_pylist()
        return targets


class VQATask(Task):
    """Answer classification with BCE over official soft scores (0, .3, .6, .9, 1).

    The vocabulary holds the answers that are the majority (`multiple_choice_answer`) of at least
    `min_answer_count` training questions (the common VQA v2 recipe: 9 → 3,129 answers), cut to `top_k`, each in
    the form the chosen official evaluator (`vqa_eval`: current | 2017) gives credit for: normalised, or as the
    annotators wrote it where all ten agree and the current evaluator compares them unprocessed.
    """

    name = "vqa"
    table_kind = "qa"
    epochs = 13  # default budget (trainer.max_epochs=null), measured in the README
    monitor_key = "acc"

    def __init__(
        self,
        *,
        min_answer_count: int = 9,
        top_k: int | None = None,
        head_hidden_mult: int = 2,
        dropout: float = 0.1,
        answer_mode: str = "classify",
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        answer_max_length: int = 8,
        beam_size: int = 1,
        vqa_eval: str = DEFAULT_VQA_EVAL,
    ) -> None:
        self.rules = vqa_eval_rules(str(vqa_eval))  # YAML reads an unquoted 2017 as an int
        if answer_mode not in ANSWER_MODES:
            raise ConfigError(f"task.answer_mode={answer_mode}: choose one of {', '.join(ANSWER_MODES)}")
        self.answer_mode = answer_mode
        self.decoder_layers, self.decoder_heads = decoder_layers, decoder_heads
        self.answer_max_length, self.beam_size = answer_max_length, beam_size
        self.framing: TextFraming | None = None
        self.min_answer_count = min_answer_count
        self.top_k = top_k
        self.head_hidden_mult = head_hidden_mult
        self.dropout = dropout
        self.answers: list[str] = []
        self.answer_prior: list[float] = []  # share of training questions whose majority answer is each class
        self._index: dict[str, int] = {}

    # -- data side -------------------------------------------------------------------------------------------
    def fit(self, train_table: pa.Table) -> None:
        majority = train_table.column("multiple_choice_answer").to_pylist()
        if all(a is None for a in majority):
            raise DataError("VQA training split has no annotations (multiple_choice_answer is missing)")
        human = train_table.column("answers").to_pylist()
        counts = Counter(self.rules.answer_class(a, answers) for a, answers in zip(majority, human) if a)
        ranked = sorted(
            ((n, a) for a, n in counts.items() if n >= self.min_answer_count and a), key=lambda t: (-t[0], t[1])
        )
        if self.top_k:
            ranked = ranked[: self.top_k]
        if not ranked:
            raise DataError(f"no answer occurs {self.min_answer_count}+ times in training; lower task.min_answer_count")
        self._set_answers([a for _, a in ranked])
        self.answer_prior = [n / len(majority) for n, _ in ranked]

    def _set_answers(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self._index = {a: i for i, a in enumerate(self.answers)}

    def state_dict(self) -> dict[str, Any]:
        return {"answers": list(self.answers), "answer_prior": list(self.answer_prior)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set_answers(state["answers"])
        self.answer_prior = list(state.get("answer_prior", []))

    def bind_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> None:
        if self.answer_mode == "generate":
            self.framing = TextFraming(tokenizer)

    def texts(self, table: pa.Table) -> list[str]:
        return table.column("question").to_pylist()

    def vocabulary_texts(self, table: pa.Table) -> list[str]:
        if self.answer_mode == "classify":
            return self.texts(table)
        return self.texts(table) + [a for a in table.column("multiple_choice_answer").to_pylist() if a]

    def targets(self, table: pa.Table) -> VQATargets:
        answers_col = table.column("answers").to_pylist()
        annotated = any(a is not None for a in answers_col)
        scorer = VocabularyScorer(self.rules, self.answers)
        offsets = [0]
        idx: list[int] = []
        scores: list[float] = []
        for human in answers_col:
            if human:
                for j, score in scorer.scores(human).items():
                    idx.append(j)
                    scores.append(score)
            offsets.append(len(idx))
        types = [answer_type_index(t) for t in table.column("answer_type").to_pylist()]
        return VQATargets(
            question_id=table.column("question_id").to_numpy().astype(np.int64),
            answer_type=np.asarray(types, dtype=np.int64),
            offsets=np.asarray(offsets, dtype=np.int64),
            answer_idx=np.asarray(idx, dtype=np.int64),
            answer_score=np.asarray(scores, dtype=np.float64),
            num_answers=len(self.answers),
            annotated=annotated,
            **(self._generation_targets(table) if self.answer_mode == "generate" else {}),
        )

    def _generation_targets(self, table: pa.Table) -> dict[str, Any]:
        human = table.column("answers").to_pylist()
        majority = [
            self.rules.answer_class(a, answers) if a else None
            for a, answers in zip(table.column("multiple_choice_answer").to_pylist(), human)
        ]
        return {
            "answer_text": pa.chunked_array([pa.array(majority, type=pa.string())]),
            "human_answers": table.column("answers"),
            "tokenizer": self.framing.tokenizer,
            "answer_max_length": self.answer_max_length,
        }

    # -- model side ------------------------------------------------------------------------------------------
    def build_head(self, dim: int) -> nn.Module:
        if self.answer_mode == "generate":
            return CaptionDecoder(
                vocab_size=len(self.framing.tokenizer),
                dim=dim,
                layers=self.decoder_layers,
                heads=self.decoder_heads,
                heads_key="task.decoder_heads",
                max_positions=self.answer_max_length + 2,
                dropout=self.dropout,
            )
        head = mlp(dim, self.head_hidden_mult * dim, len(self.answers), self.dropout)
        if self.answer_prior:
            # Start from the answer priors: with a zero bias, Adam moves each bias by ~lr per step, so merely
            # learning how rare each answer is would take thousands of steps.
            prior = torch.tensor(self.answer_prior).clamp(1e-4, 1 - 1e-4)
            with torch.no_grad():
                head[-1].bias.copy_(torch.log(prior / (1 - prior)))
        return head

    def forward(self, model: VisionLanguageModel, batch: Batch) -> AnswerLogits | TeacherForced:
        targets: VQATargetsBatch = batch.targets
        if self.answer_mode == "generate":
            return self.framing.teacher_forcing(
                model.heads[self.name], self._answer_memory(model, batch), targets.answer_ids, targets.answer_mask
            )
        fused = model(batch.images, batch.input_ids, batch.attention_mask, batch.image_index)
        return AnswerLogits(model.heads[self.name](fused.pooled))

    def _answer_memory(self, model: VisionLanguageModel, batch: Batch) -> Tokens:
        """What the answer decoder attends to: the image's tokens and the fused (question-about-image) tokens."""
        vision, text = model.encode(batch.images, batch.input_ids, batch.attention_mask, batch.image_index)
        return Tokens.concat(vision, model.fusion(vision, text).tokens)

    def eval_forward(self, model: VisionLanguageModel, batch: Batch) -> AnswerLogits | GeneratedText:
        if self.answer_mode == "classify":
            return self.forward(model, batch)
        return self._write_answers(model, batch, self.beam_size)

    def _write_answers(self, model: VisionLanguageModel, batch: Batch, beam_size: int) -> GeneratedText:
        memory = self._answer_memory(model, batch)
        decoder = model.heads[self.name]
        return self.framing.generate(
            decoder, memory, max_length=self.answer_max_length, beam_size=beam_size, length_penalty=0.0
        )

    # -- prediction on a user's inputs (cmvl/tasks/prediction.py) --------------------------------------------
    predict_input = "question"

    def predict_forward(
        self, model: VisionLanguageModel, batch: Batch, options: PredictOptions
    ) -> AnswerLogits | GeneratedText:
        if self.answer_mode == "classify":
            return self.forward(model, batch)  # reads no targets in classify mode
        return self._write_answers(model, batch, options.beam_size or self.beam_size)

    def predict_results(
        self, outputs: AnswerLogits | GeneratedText, batch: Batch, options: PredictOptions
    ) -> list[AnswerResult]:
        """The `options.top_k` most probable vocabulary answers (the first is evaluation's), or the written one."""
        if isinstance(outputs, GeneratedText):
            return [AnswerResult(self.name, [ScoredLabel(a, None)]) for a in self.framing.decode(outputs.tokens)]
        return [AnswerResult(self.name, row) for row in top_scored(self.answers, outputs.logits, options.top(5))]

    def loss(self, outputs: AnswerLogits | TeacherForced, batch: Batch) -> torch.Tensor:
        if isinstance(outputs, TeacherForced):
            return self.framing.next_token_loss(outputs)
        logits = outputs.logits
        # Sum over answers, mean over questions: the usual VQA scaling of the soft-target BCE.
        scores = batch.targets.scores.float()  # float64 in the batch for the metric's exact scores
        return F.binary_cross_entropy_with_logits(logits.float(), scores, reduction="sum") / logits.shape[0]

    def make_metric(self) -> VQAAccuracy:
        return VQAAccuracy()

    def update_metric(self, metric: VQAAccuracy, outputs: AnswerLogits | GeneratedText, batch: Batch) -> None:
        targets: VQATargetsBatch = batch.targets
        if isinstance(outputs, GeneratedText):  # string-level official score of each written answer
            written = self.framing.decode(outputs.tokens)
            scores = [self.rules.score(a, human) for a, human in zip(written, targets.human_answers)]
            metric.update(torch.tensor(scores, dtype=torch.float64), targets.answer_type)
            return
        best = outputs.logits.argmax(dim=1, keepdim=True)
        metric.update(targets.scores.gather(1, best).squeeze(1), targets.answer_type)

    def sample_notes(self, outputs: AnswerLogits | GeneratedText, batch: Batch, count: int) -> list[SampleNote]:
        targets: VQATargetsBatch = batch.targets
        answers = [p["answer"] for p in self.predictions(outputs, batch)[:count]]
        notes = []
        for i, answer in enumerate(answers):
            scores = targets.scores[i]
            truth = self.answers[int(scores.argmax())] if float(scores.max()) > 0 else "(not in the answer vocabulary)"
            if targets.human_answers is not None:  # generative mode: the annotators' most common answer
                truth = Counter(targets.human_answers[i]).most_common(1)[0][0]
            if targets.human_answers is not None:
                value = self.rules.score(answer, targets.human_answers[i])
            else:
                value = float(scores[self._index[answer]]) if answer in self._index else 0.0
            lines = [batch.texts[i], f"pred: {answer} (VQA score {value:.1f})", f"true: {truth}"]
            notes.append(SampleNote(int(batch.image_index[i]), lines, verdict=score_verdict(value), row=i))
        return notes

    def predictions(self, outputs: AnswerLogits | GeneratedText, batch: Batch) -> list[dict[str, Any]]:
        if isinstance(outputs, GeneratedText):
            answers = self.framing.decode(outputs.tokens)
        else:
            answers = [self.answers[j] for j in outputs.logits.argmax(dim=1).tolist()]
        return [{"question_id": int(q), "answer": a} for q, a in zip(batch.targets.question_id.tolist(), answers)]


def score_verdict(score: float) -> str:
    """A VQA score (0 … 1) as the sample pictures mark it."""
    return "right" if score >= 1.0 else "partly right" if score > 0 else "wrong"


def fill_vqa_eval_of_older_checkpoint(task_cfg: DictConfig) -> None:
    """A checkpoint's task config written before `vqa_eval` existed: its VQA task(s) were scored by the 2017 rules."""
    for node in [task_cfg, *task_cfg.get("tasks", {}).values()]:  # a multitask's members are task configs too
        if node.get("_target_") == f"{VQATask.__module__}.{VQATask.__name__}" and "vqa_eval" not in node:
            node.vqa_eval = OLDER_CHECKPOINT_VQA_EVAL

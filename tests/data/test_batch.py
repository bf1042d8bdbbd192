"""The typed `Batch`: one `.to(device)` that moves tensors only, pinned memory through the DataLoader's own pinning,
image-only tasks that carry (and tokenise) no text, and text shared by a batch sent once per batch."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.plugins.precision import HalfPrecision
from torch.utils.data import DataLoader
from torch.utils.data._utils.pin_memory import pin_memory as loader_pin_memory

from cmvl.batch import Batch, TextQueries
from cmvl.models.tokens import Tokens
from cmvl.tasks.retrieval import RetrievalOutputs
from cmvl.tasks.tagging import TaggingTask
from cmvl.tasks.vqa import VQATargetsBatch
from tests.conftest import TINY_WORLD_ANY_TASK


def _batch(with_queries: bool = True) -> Batch:
    texts = ["what is left of the circle?", "how many?", "is it red?"]
    ones = torch.ones(2, 3, dtype=torch.long)
    queries = TextQueries(["circle", "square"], ones, ones.clone()) if with_queries else None
    return Batch(
        images=torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8),
        image_index=torch.tensor([0, 1, 0]),
        image_key=torch.tensor([17, 4]),
        index=torch.tensor([5, 6, 7]),
        task="vqa",
        targets=VQATargetsBatch(
            question_id=torch.tensor([50, 60, 70]),
            answer_type=torch.tensor([0, 1, -1]),
            scores=torch.rand(3, 4, dtype=torch.float64),
            human_answers=[["yes"] * 10, ["2"] * 10, ["no"] * 10],
        ),
        input_ids=torch.randint(0, 50, (3, 5)),
        attention_mask=torch.ones(3, 5, dtype=torch.long),
        texts=texts,
        queries=queries,
    )


def _tensors(record) -> dict[str, torch.Tensor]:
    """Every tensor of a batch by its path (`targets.scores`), nested records included."""
    found = {}
    for name, value in vars(record).items():
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif hasattr(value, "__dataclass_fields__"):
            found.update({f"{name}.{k}": v for k, v in _tensors(value).items()})
    return found


def test_to_moves_every_tensor_and_leaves_the_rest_untouched():
    batch = _batch()
    moved = batch.to("meta", non_blocking=True)  # a device every machine has
    assert type(moved) is Batch and type(moved.targets) is VQATargetsBatch and len(moved) == len(batch) == 3
    tensors = _tensors(moved)
    assert set(tensors) == set(_tensors(batch)) and len(tensors) == 11  # nothing lost, nested records included
    assert all(t.is_meta for t in tensors.values())
    assert not any(t.is_meta for t in _tensors(batch).values())  # a new batch: the original stays where it was
    # Texts, references and the task's name are the very same objects: not walked, not copied.
    assert moved.texts is batch.texts and moved.targets.human_answers is batch.targets.human_answers
    assert moved.task == "vqa" and moved.queries.texts is batch.queries.texts


def test_an_outputs_record_moves_its_tokens_too():
    outputs = RetrievalOutputs(
        image_emb=torch.randn(2, 4),
        text_emb=torch.randn(3, 4),
        logit_scale=torch.tensor(14.0),
        image_tokens=Tokens(torch.randn(2, 9, 4), torch.ones(2, 9, dtype=torch.bool), grid=(3, 3)),
    )
    moved = outputs.to("meta")
    assert moved.image_tokens.feats.is_meta and moved.image_tokens.mask.is_meta and moved.image_tokens.grid == (3, 3)
    assert moved.itm_logits is None and moved.text_tokens is None


def test_the_loaders_pinning_calls_the_batchs_own(monkeypatch):
    """`pin_memory=True` loaders hand each batch to torch's `pin_memory(data)`, which calls `data.pin_memory()`;
    every tensor of the batch is pinned and the result is still a `Batch` (a dict walk would have lost the type)."""
    pinned: list[torch.Tensor] = []

    def fake_pin(tensor: torch.Tensor) -> torch.Tensor:  # pinning needs an accelerator; record what was asked
        copy = tensor.clone()
        pinned.append(copy)
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = _batch()
    result = loader_pin_memory(batch)
    assert type(result) is Batch and type(result.targets) is VQATargetsBatch
    assert sorted(map(id, _tensors(result).values())) == sorted(map(id, pinned)) and len(pinned) == 11
    assert result.texts is batch.texts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_a_pin_memory_loader_delivers_pinned_batches_that_move_to_the_gpu():
    batches = [_batch(), _batch(with_queries=False)]
    loader = DataLoader(batches, batch_size=None, collate_fn=lambda b: b, pin_memory=True)
    for batch in loader:
        assert type(batch) is Batch and all(t.is_pinned() for t in _tensors(batch).values())
        on_gpu = batch.to(torch.device("cuda"), non_blocking=True)
        assert all(t.is_cuda for t in _tensors(on_gpu).values())
        torch.testing.assert_close(on_gpu.targets.scores.cpu(), batch.targets.scores)


def test_true_half_precision_converts_the_batchs_floats_and_keeps_its_type():
    """Lightning's `*-true` precision converts a batch's floating tensors through its dataclass fields."""
    converted = HalfPrecision("bf16-true").convert_input(_batch())
    assert type(converted) is Batch and converted.targets.scores.dtype == torch.bfloat16
    assert converted.input_ids.dtype == torch.long and converted.images.dtype == torch.uint8


class _CountingTokenizer:
    """The run's tokenizer, with every call recorded (the texts it was asked to tokenise)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def _datamodule(task: str):
    from cmvl.config.compose import compose_config
    from cmvl.training.build import build_datamodule

    datamodule = build_datamodule(compose_config([*TINY_WORLD_ANY_TASK, f"task={task}"]))
    datamodule.prepare()
    datamodule.tokenizer = _CountingTokenizer(datamodule.tokenizer)
    return datamodule


def _first_batches(dataset, collate, count: int = 2) -> list[Batch]:
    loader = DataLoader(dataset, batch_size=7, collate_fn=collate)
    return [batch for batch, _ in zip(loader, range(count))]


def test_an_image_only_task_tokenises_nothing_and_its_batches_carry_no_text(tiny_world):
    datamodule = _datamodule("tagging")
    for split, train in (("train", True), ("val", False)):
        dataset, collate = datamodule.dataset(datamodule.task, split, train=train)
        for batch in _first_batches(dataset, collate):
            assert batch.input_ids is None and batch.attention_mask is None and batch.texts is None
            assert batch.targets.labels.shape == (7, len(datamodule.task.categories)) and len(batch) == 7
    assert datamodule.tokenizer.calls == []  # not one text, not even [""] * rows


def test_captioning_tokenises_the_captions_it_learns_and_no_text_where_it_writes_them(tiny_world):
    datamodule = _datamodule("caption")
    train, train_collate = datamodule.dataset(datamodule.task, "train", train=True)
    assert len(datamodule.tokenizer.calls) == 1 and len(datamodule.tokenizer.calls[0]) == len(train)
    (batch,) = _first_batches(train, train_collate, 1)
    assert batch.input_ids.shape[0] == len(batch.texts) == 7
    val, val_collate = datamodule.dataset(datamodule.task, "val", train=False)
    assert len(datamodule.tokenizer.calls) == 1  # evaluation rows: nothing more tokenised
    (batch,) = _first_batches(val, val_collate, 1)
    assert batch.input_ids is None and batch.texts is None and len(batch.targets.references[0]) > 0


class _TaggingWithClassNames(TaggingTask):
    """Tagging whose category names are a query set shared by every batch (the way a detector reads them)."""

    def query_texts(self) -> list[str]:
        return list(self.categories)


def test_a_batchs_shared_queries_are_tokenised_once_and_sent_once_per_batch(tiny_world):
    datamodule = _datamodule("tagging")
    task = _TaggingWithClassNames()
    task.load_state_dict(datamodule.task.state_dict())
    dataset, collate = datamodule.dataset(task, "train", train=True)
    assert datamodule.tokenizer.calls == [task.categories]  # the queries, once for the split; no per-sample text
    batches = _first_batches(dataset, collate, 3)
    queries = batches[0].queries
    assert queries.texts == task.categories and queries.input_ids.shape[0] == len(task.categories) == len(queries)
    assert queries.input_ids.shape == queries.attention_mask.shape and queries.input_ids.dim() == 2  # Q×L, not B×Q×L
    assert all(batch.queries is queries for batch in batches)  # the same tensors in every batch, not copied per row
    expected = datamodule.tokenizer.tokenizer(task.categories, padding=True, return_tensors="pt")
    assert torch.equal(queries.input_ids, expected["input_ids"])
    assert set(task.vocabulary_texts(datamodule.table("objects", "train"))) == set(task.categories)

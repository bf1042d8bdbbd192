"""`VLDataModule`: annotation tables + task targets + images + tokenizer → batches."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerFast

from cmvl.batch import Batch, TextQueries
from cmvl.data.images import build_transform
from cmvl.data.multitask_loader import MultiTaskLoader
from cmvl.data.sampling import ImageGroupedSampler, ShardSampler
from cmvl.data.sources.base import Source
from cmvl.data.text import TokenizedTexts, tokenizer_to_state
from cmvl.data.workers import start_loader_worker
from cmvl.errors import ConfigError, DataError
from cmvl.log import EVERY_RANK, get_logger
from cmvl.tasks.base import SplitTargets, Task

log = get_logger(__name__)


class Sample(NamedTuple):
    """One row as the dataset hands it to the `Collator`."""

    image: torch.Tensor  # uint8 3×H×W, shared by the rows of one image in a batch fetch
    text: str | None  # None: the task's samples have no text
    input_ids: np.ndarray | None  # the text's token ids (tokenised once per split), unpadded
    index: int  # the row in the split
    image_id: int  # the image's number in the split


class ImageTextDataset(Dataset):
    """Sample i = (image of row i, text of row i, i, image id of row i); `texts` and `tokens` are None for a task
    whose samples have no text. Columns stay in Arrow/numpy: nothing per-row in Python objects, so forked
    DataLoader workers share them instead of copying them page by page.

    A batch fetch (`__getitems__`) decodes and transforms each distinct image once; its rows share that tensor
    (so a random crop is the same for all questions about one image, which the model's per-image encoding needs).
    """

    def __init__(
        self,
        table: pa.Table,
        texts: list[str] | None,
        tokens: TokenizedTexts | None,
        open_image: Callable[[str], Image.Image],
        transform,
        *,
        max_bad_fraction: float | None = None,
        cache_images: bool = False,
    ) -> None:
        encoded = pc.dictionary_encode(table.column("image").combine_chunks())
        self.image_files = encoded.dictionary
        self.image_ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self.texts = None if texts is None else pa.array(texts, type=pa.string())
        self.tokens = tokens
        self.open_image = open_image  # the source's: a file under its image folder, or an image inside a dataset
        self.transform = transform
        # Training skips unreadable images (their rows are replaced by the next readable rows, so batches stay
        # full) up to this share of the split's images, counted per loader process; None (evaluation): an
        # unreadable image is an error, nothing is substituted.
        self.max_bad_fraction = max_bad_fraction
        self.bad_images: set[int] = set()
        # Decoded, resized images kept by image number (each loader process keeps those it decodes).
        self.cache_images = cache_images
        self.cached: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.image_ids)

    def _image(self, image_id: int) -> torch.Tensor | None:
        """The transformed image, or None for an unreadable one that training may skip."""
        if image_id in self.bad_images:
            return None
        if image_id in self.cached:
            return self.cached[image_id]
        try:
            image = self.transform(self.open_image(self.image_files[image_id].as_py()))
            if self.cache_images:
                self.cached[image_id] = image
            return image
        except DataError as err:
            if self.max_bad_fraction is None:
                raise
            self.bad_images.add(image_id)
            allowed = int(self.max_bad_fraction * len(self.image_files))
            if len(self.bad_images) > allowed:
                raise DataError(
                    f"{len(self.bad_images)} unreadable training images, more than data.max_bad_fraction="
                    f"{self.max_bad_fraction} of the split's {len(self.image_files)} images allow (last: {err})"
                ) from None
            log.warning(f"skipped {err} ({len(self.bad_images)} of at most {allowed})", extra=EVERY_RANK)
            return None

    def _sample(self, i: int, image: torch.Tensor) -> Sample:
        text = None if self.texts is None else self.texts[i].as_py()
        input_ids = None if self.tokens is None else self.tokens.row(i)
        return Sample(image, text, input_ids, i, int(self.image_ids[i]))

    def __getitem__(self, i: int) -> Sample:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        images: dict[int, torch.Tensor] = {}
        samples = []
        for i in indices:
            row = self._readable_row(i, images)
            samples.append(self._sample(row, images[int(self.image_ids[row])]))
        return samples

    def _readable_row(self, i: int, images: dict[int, torch.Tensor]) -> int:
        """Row i, or if its image is unreadable (training) the next row whose image is readable. Each distinct
        image is decoded once per batch (`images`)."""
        for step in range(len(self)):
            row = (i + step) % len(self)
            image_id = int(self.image_ids[row])
            if image_id not in images:
                image = self._image(image_id)
                if image is None:
                    continue
                images[image_id] = image
            return row
        raise DataError("no image of the training split is readable")


class Collator:
    """Makes a `Batch`: stacks each distinct image once (`images`: U×3×H×W, `image_index`: B, row → its image), pads
    the texts' token ids (tokenised once per split, `TokenizedTexts`; none for a task without text), adds the
    split's shared `queries` (the same tensors in every batch) and asks the task's targets for theirs."""

    def __init__(
        self,
        tokens: TokenizedTexts | None,
        targets: SplitTargets,
        task: str,
        queries: TextQueries | None = None,
    ) -> None:
        self.tokens, self.targets, self.task, self.queries = tokens, targets, task, queries

    def __call__(self, samples: list[Sample]) -> Batch:
        input_ids = attention_mask = texts = None
        if self.tokens is not None:
            input_ids, attention_mask = self.tokens.pad([s.input_ids for s in samples])
            texts = [s.text for s in samples]
        indices = [s.index for s in samples]
        slot: dict[int, int] = {}
        images, image_index = [], []
        for sample in samples:
            if sample.image_id not in slot:
                slot[sample.image_id] = len(images)
                images.append(sample.image)
            image_index.append(slot[sample.image_id])
        return Batch(
            images=torch.stack(images),
            image_index=torch.as_tensor(image_index),
            image_key=torch.as_tensor(list(slot)),
            index=torch.as_tensor(indices),
            task=self.task,
            targets=self.targets.collate(indices),
            input_ids=input_ids,
            attention_mask=attention_mask,
            texts=texts,
            queries=self.queries,
        )


def tokenize_queries(tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int) -> TextQueries:
    """A task's shared query texts, tokenised and padded once (Q×L, as the tokenizer pads)."""
    tokens = TokenizedTexts(tokenizer, texts, max_length)
    input_ids, attention_mask = tokens.pad([tokens.row(i) for i in range(len(texts))])
    return TextQueries(list(texts), input_ids, attention_mask)


def _cap_notice(member: Task, sampler: ImageGroupedSampler) -> str:
    """The one line that says `data.max_rows_per_image` changes this split's batches, and how much."""
    counts, cap = sampler.rows_per_image, sampler.max_rows_per_image
    return (
        f"the {member.name} train split has {counts.mean():.1f} rows per image on average (at "
        f"most {counts.max()}; {int((counts > cap).sum())} of {len(counts)} images have more than {cap}): a batch "
        f"takes at most data.max_rows_per_image={cap} rows of one image, the rest go to later batches of the epoch"
    )


class VLDataModule(pl.LightningDataModule):
    """Builds everything data-side from a `Source`, a `Task` and a tokenizer builder.

    `prepare()` (run in every process before the model is built) fits the task on the training split and
    builds the tokenizer, unless the run was restored from a checkpoint (`cmvl.run.restore_task`: `task` holds its
    state and `tokenizer` is given).
    """

    def __init__(
        self,
        *,
        source: Source,
        task: Task,
        tokenizer_builder: Any,
        text_max_length: int,
        image: dict[str, Any],
        batch_size: int = 64,
        group_by_image: bool | None = None,
        max_rows_per_image: int | None = 8,
        seed: int = 0,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        max_bad_fraction: float = 0.001,
        image_cache_mb: float = 0,
        tokenizer: PreTrainedTokenizerFast | None = None,
    ) -> None:
        super().__init__()
        self.source, self.task = source, task
        self.tokenizer_builder, self.text_max_length = tokenizer_builder, text_max_length
        self.image_cfg = dict(image)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.group_by_image, self.seed = group_by_image, seed
        self.max_rows_per_image = max_rows_per_image  # None: no cap (runs from before the setting existed)
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.max_bad_fraction, self.image_cache_mb = max_bad_fraction, image_cache_mb
        self.tokenizer = tokenizer  # a restored run's (its task is already bound to it), else built by prepare()
        self._tables: dict[tuple[str, str], pa.Table] = {}  # (kind, split) → table
        if self.image_cfg.get("random_crop_scale") and not task.allows_random_crop:
            raise ConfigError(
                f"data.image.random_crop_scale: task '{task.name}' predicts positions in the image; a random crop "
                "would move them (set it to null)"
            )

    def table(self, kind: str, split: str) -> pa.Table:
        if (kind, split) not in self._tables:
            self._tables[kind, split] = self.source.table(kind, split)
        return self._tables[kind, split]

    def prepare(self) -> None:
        if self.tokenizer is not None:
            return
        texts: list[str] = []
        for member in self.task.members():
            train = self.table(member.table_kind, "train")
            member.fit(train)
            texts += member.vocabulary_texts(train)
        self.tokenizer = self.tokenizer_builder.build(texts)
        self.task.bind_tokenizer(self.tokenizer)

    def data_state(self) -> dict[str, Any]:
        assert self.tokenizer is not None, "prepare() first"
        return {"task": self.task.state_dict(), "tokenizer": tokenizer_to_state(self.tokenizer)}

    def dataset(self, member: Task, split: str, *, train: bool) -> tuple[ImageTextDataset, Collator]:
        assert self.tokenizer is not None, "prepare() first"
        table = member.rows(self.table(member.table_kind, split), train=train)
        crop = self.image_cfg.get("random_crop_scale") if train else None
        size = self.image_cfg["size"]
        transform = build_transform(image_size=size, train=train, random_crop_scale=crop)
        texts = member.texts(table)  # None: image-only samples, nothing to tokenise
        tokens = None if texts is None else TokenizedTexts(self.tokenizer, texts, self.text_max_length)
        query_texts = member.query_texts()
        queries = None if query_texts is None else tokenize_queries(self.tokenizer, query_texts, self.text_max_length)
        dataset = ImageTextDataset(
            table,
            texts,
            tokens,
            self.source.open_image,
            transform,
            max_bad_fraction=self.max_bad_fraction if train else None,
        )
        # Keep decoded images in memory when the transform is deterministic and the whole split fits the budget
        # (a partial cache would hold a few percent of a large split in every loader process and help little).
        split_bytes = len(dataset.image_files) * 3 * size * size
        dataset.cache_images = not crop and split_bytes <= self.image_cache_mb * 2**20
        return dataset, Collator(tokens, member.targets(table), member.name, queries)

    def train_dataloader(self) -> StatefulDataLoader | MultiTaskLoader:
        loaders = {member.name: self._train_loader(member) for member in self.task.members()}
        if len(loaders) == 1:
            return next(iter(loaders.values()))
        return MultiTaskLoader(loaders, sampling=self.task.sampling, weights=self.task.weights, seed=self.seed)

    def _train_loader(self, member: Task) -> StatefulDataLoader:
        if self.source.streams_training:
            return self._stream_loader(member)
        # Stateful: its position and shuffle state go into the checkpoint, so a resume continues mid-epoch.
        dataset, collate = self.dataset(member, "train", train=True)
        # Shuffling images or single rows: either way the order is a pure function of (seed, epoch).
        by_image = member.group_rows_by_image if self.group_by_image is None else self.group_by_image
        groups = dataset.image_ids if by_image else np.arange(len(dataset))
        sampler = ImageGroupedSampler(
            dataset, groups, seed=self.seed, batch_size=self.batch_size, max_rows_per_image=self.max_rows_per_image
        )
        if sampler.cap_acts and sampler.rank == 0:
            log.info(_cap_notice(member, sampler))
        if len(sampler) == 0:  # full global batches only: not one training step
            processes = sampler.num_replicas
            raise DataError(
                f"the {member.name} train split has {len(dataset)} {member.table_kind} rows, fewer than one batch "
                f"(data.batch_size={self.batch_size}" + (f" × {processes} processes)" if processes > 1 else ")")
            )
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            generator=sampler.loader_generator,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=self._worker_init,
        )

    def _stream_loader(self, member: Task) -> StatefulDataLoader:
        """The training loader of a streamed source (`cmvl.data.streaming`): no sampler, no table."""
        from cmvl.data.sampling import _world
        from cmvl.data.streaming import ShardStream, StreamCollator, loader_workers

        assert self.tokenizer is not None, "prepare() first"
        if self.group_by_image:
            raise ConfigError(
                f"data.group_by_image=true: dataset={self.source.name} streams samples through a shuffle buffer, it "
                "cannot batch an image's rows together; set it to null or false"
            )
        world, rank = _world()
        shards = self.source.train_shards
        workers = loader_workers(len(shards), world, self.num_workers)
        crop = self.image_cfg.get("random_crop_scale")
        reader = self.source.train_reader(member.table_kind)
        stream = ShardStream(
            shards,
            self.source.train_counts(member.table_kind),
            reader=reader,
            transform=build_transform(image_size=self.image_cfg["size"], train=True, random_crop_scale=crop),
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle_buffer=self.source.shuffle_buffer,
            max_bad_fraction=self.max_bad_fraction,
            world=world,
            rank=rank,
            workers=workers,
        )
        stream.next_epoch = self.trainer.current_epoch if self.trainer is not None else 0  # a reloaded loader
        if len(stream) == 0:
            raise DataError(
                f"the {member.name} training shards hold {sum(stream.counts)} samples, fewer than one batch for each "
                f"of {stream.slots} loader slot(s) (data.batch_size={self.batch_size})"
            )
        query_texts = member.query_texts()
        queries = None if query_texts is None else tokenize_queries(self.tokenizer, query_texts, self.text_max_length)
        return StatefulDataLoader(
            stream,
            batch_size=self.batch_size,
            drop_last=True,
            num_workers=workers,
            collate_fn=StreamCollator(member, reader.schema, self.tokenizer, self.text_max_length, queries),
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            worker_init_fn=self._worker_init,
        )

    @property
    def _worker_init(self) -> functools.partial:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return functools.partial(start_loader_worker, rank=rank)

    def eval_dataloaders(self, split: str) -> dict[str, DataLoader]:
        """One loader per member task (task name → loader), in the order of `task.members()`."""
        return {member.name: self._eval_loader(member, split) for member in self.task.members()}

    def _eval_loader(self, member: Task, split: str) -> DataLoader:
        dataset, collate = self.dataset(member, split, train=False)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=ShardSampler(dataset),  # under DDP each row is scored once, by one rank
            generator=torch.Generator().manual_seed(self.seed),  # not the global RNG: evaluation leaves it alone
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=self._worker_init,
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = list(self.eval_dataloaders("val").values())
        return loaders[0] if len(loaders) == 1 else loaders

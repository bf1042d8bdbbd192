"""`dataset=webdataset`: image-text tar shards (img2dataset's layout, `cmvl.data.shards`) as a `captions` source
whose training split is streamed (`cmvl.data.streaming`), never built as a table.

Tables exist only where they are bounded: `val` (and `test`) from their own shard patterns, read into a table
whose `image` values locate each image inside its shard (the bytes stay in the tar), and `train` as the captions of
its first `vocabulary_samples` samples, which is all that a tokenizer built for the run and the task's `fit` see.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from cmvl.data.shards import TarSamples, expand_patterns, index_shard, read_located_image, shard_counts
from cmvl.data.sources.base import Source
from cmvl.data.sources.coco import CAPTIONS_SCHEMA
from cmvl.data.streaming import check_stream_settings

EVAL_SPLITS = ("val", "test")


class WebDatasetSource(Source):
    """`train`: shard pattern(s) streamed in training; `val` / `test`: shard pattern(s) of evaluation splits (null:
    none). `shuffle_buffer`: samples per loader worker that the stream shuffles within."""

    name = "webdataset"
    kinds = frozenset({"captions"})
    images_on_disk = False
    streams_training = True

    def __init__(
        self,
        *,
        train: str | list[str],
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        split: str = "val",
        shuffle_buffer: int = 1000,
        vocabulary_samples: int = 20000,
    ) -> None:
        super().__init__(split=split)
        check_stream_settings(shuffle_buffer, vocabulary_samples)
        self.patterns = {"train": train, "val": val, "test": test}
        self.splits = self.splits_for(self.patterns)
        self.shuffle_buffer, self.vocabulary_samples = shuffle_buffer, vocabulary_samples
        self.train_shards = expand_patterns(train, key="dataset.train")
        self._counts: list[int] | None = None

    @classmethod
    def splits_for(cls, args: Mapping[str, Any]) -> tuple[str, ...]:
        return ("train", *(split for split in EVAL_SPLITS if args.get(split)))

    @property
    def image_root(self) -> Path:
        return Path(self.train_shards[0]).parent

    def train_counts(self, kind: str = "captions") -> list[int]:
        """Samples per training shard (`cmvl.data.shards.shard_counts`), once per process."""
        del kind  # captions, the only kind
        if self._counts is None:
            self._counts = shard_counts(self.train_shards)
        return self._counts

    def open_image(self, image: str) -> Image.Image:
        return read_located_image(image)

    @staticmethod
    def train_reader(kind: str) -> TarSamples:
        """How the training stream reads the shards (`cmvl.data.streaming`)."""
        del kind  # captions, the only kind
        return TarSamples()

    def _read(self, kind: str, split: str) -> pa.Table:
        del kind  # captions, the only kind
        if split == "train":
            return self._table(self.train_shards, limit=self.vocabulary_samples, skip_bad=True)
        return self._table(expand_patterns(self.patterns[split], key=f"dataset.{split}"))

    @staticmethod
    def _table(shards: list[str], *, limit: int | None = None, skip_bad: bool = False) -> pa.Table:
        """One row per sample; the rows of one image id share the location of its first sample (so grouping by
        image, as caption evaluation does, finds one image)."""
        columns: dict[str, list] = {name: [] for name in CAPTIONS_SCHEMA.names}
        first: dict[int, str] = {}
        for shard in shards:
            for sample, location in index_shard(shard, skip_bad=skip_bad):
                columns["image_id"].append(sample.image_id)
                columns["image"].append(first.setdefault(sample.image_id, location))
                columns["caption_id"].append(sample.caption_id)
                columns["caption"].append(sample.caption)
                if limit is not None and len(columns["caption"]) >= limit:
                    return pa.table(columns, schema=CAPTIONS_SCHEMA)
        return pa.table(columns, schema=CAPTIONS_SCHEMA)

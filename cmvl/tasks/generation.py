"""Text-to-image generation: a generator (`generator=cvae|diffusion`) learns to draw an image from its caption.

Reads any `captions` table (shapes, COCO, a Hugging Face dataset): the caption is the input, the image the target.
Validation reports the generator's objective (the CVAE's negative ELBO, the diffusion model's noise-prediction
error, each per pixel) and draws images for the first captions of each batch: the run's sample pictures show them
beside the real images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torchmetrics import Metric
from transformers import PreTrainedTokenizerFast

from cmvl.batch import Batch, TensorRecord
from cmvl.errors import ConfigError
from cmvl.models.families.generator import TextToImageModel
from cmvl.models.generators.base import GeneratorLosses, Progress, no_progress
from cmvl.tasks.base import SampleNote, SplitTargets, Task
from cmvl.tasks.prediction import GeneratedImage, PredictOptions


@dataclass
class GenerationTargetsBatch(TensorRecord):
    image_id: torch.Tensor  # B int64 (the target image is `batch.images[batch.image_index]`)


@dataclass
class GenerationTargets(SplitTargets):
    image_id: np.ndarray  # int64 [N]
    annotated: bool = True

    def collate(self, indices: list[int]) -> GenerationTargetsBatch:
        return GenerationTargetsBatch(torch.from_numpy(self.image_id[np.asarray(indices)]))


@dataclass
class GenerationOutputs(TensorRecord):
    losses: GeneratorLosses  # per caption
    images: torch.Tensor | None  # S×3×H×W uint8: images drawn for the captions `rows` (None: none drawn)
    rows: torch.Tensor  # S int64: the batch rows drawn, the first caption of each of the batch's first S images


@dataclass
class DrawnImages(TensorRecord):
    images: torch.Tensor  # B×3×H×W uint8: one image per prompt of a prediction batch


def first_row_of_each_image(image_index: torch.Tensor) -> torch.Tensor:
    """The batch rows (in order) that are the first caption of their image: drawing those shows distinct images
    (and a captions table lists an image's most literal caption first: COCO's order, the shapes world's listing)."""
    seen: set[int] = set()
    rows = []
    for row, image in enumerate(image_index.tolist()):
        if image not in seen:
            seen.add(image)
            rows.append(row)
    return torch.tensor(rows, dtype=torch.int64, device=image_index.device)


def first_captions(table: pa.Table, per_image: int | None) -> pa.Table:
    """The rows of `table` that are among the first `per_image` of their image (in table order); all for None."""
    if per_image is None:
        return table
    seen: dict[int, int] = {}
    keep = []
    for row, image_id in enumerate(table.column("image_id").to_pylist()):
        seen[image_id] = seen.get(image_id, 0) + 1
        if seen[image_id] <= per_image:
            keep.append(row)
    return table.take(pa.array(keep, type=pa.int64()))


class GenerationLoss(Metric):
    """Means over all captions of a split of the generator's `loss` and `reconstruction` terms (sums and a count:
    exact under DDP)."""

    full_state_update = False
    higher_is_better = False
    names = ["loss", "reconstruction"]  # the keys of `compute`

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in (*self.names, "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, losses: GeneratorLosses) -> None:
        self.loss += losses.loss.detach().double().sum()
        self.reconstruction += losses.reconstruction.detach().double().sum()
        self.count += losses.loss.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp_min(1)
        return {"loss": (self.loss / count).float(), "reconstruction": (self.reconstruction / count).float()}


class GenerationTask(Task):
    """Trains the `generator` family's generator on (caption, image) pairs; the best checkpoint has the lowest
    validation loss. `val_samples`: captions per validation batch drawn as images (the sample pictures), from
    seed `sample_seed`. `captions_per_image`: only each image's first N captions are trained and validated on
    (None: all)."""

    name = "generation"
    table_kind = "captions"
    epochs = 20  # default budget (trainer.max_epochs=null)
    monitor_key = "loss"
    monitor_mode = "min"
    group_rows_by_image = False  # rows shuffled: a batch holds ~batch_size different images, not 5 captions of each
    families = (TextToImageModel,)
    parts = frozenset({"text", "generator"})

    def __init__(self, *, val_samples: int = 4, sample_seed: int = 0, captions_per_image: int | None = None) -> None:
        if val_samples < 0:
            raise ConfigError(f"task.val_samples={val_samples}: must be an integer >= 0")
        if captions_per_image is not None and captions_per_image < 1:
            raise ConfigError(f"task.captions_per_image={captions_per_image}: must be an integer >= 1 or null (all)")
        self.val_samples, self.sample_seed, self.captions_per_image = val_samples, sample_seed, captions_per_image

    def rows(self, table: pa.Table, *, train: bool) -> pa.Table:
        del train
        return first_captions(table, self.captions_per_image)

    def texts(self, table: pa.Table) -> list[str]:
        return table.column("caption").to_pylist()

    def targets(self, table: pa.Table) -> GenerationTargets:
        return GenerationTargets(image_id=table.column("image_id").to_numpy().astype(np.int64))

    def build_head(self, dim: int) -> nn.Module:
        raise TypeError("the generation task has no head: the generator family's generator is its output")

    def build_heads(self, dim: int) -> dict[str, nn.Module]:
        return {}

    def forward(self, model: TextToImageModel, batch: Batch) -> GeneratorLosses:
        return model.losses(batch.images[batch.image_index], batch.input_ids, batch.attention_mask)

    def eval_forward(self, model: TextToImageModel, batch: Batch) -> GenerationOutputs:
        # Noise from a generator seeded by the batch's first row: the numbers depend on the data, not on the
        # training RNG or on which batches ran before.
        seed = self.sample_seed + int(batch.index[0])
        noise = torch.Generator().manual_seed(seed)
        losses = model.losses(batch.images[batch.image_index], batch.input_ids, batch.attention_mask, generator=noise)
        rows = first_row_of_each_image(batch.image_index)[: self.val_samples]
        images = None
        if len(rows):
            draw = torch.Generator().manual_seed(seed)
            images = model.generate(batch.input_ids[rows], batch.attention_mask[rows], generator=draw)
        return GenerationOutputs(losses, images, rows)

    def loss(self, outputs: GeneratorLosses, batch: Batch) -> torch.Tensor:
        return outputs.loss.mean()

    def make_metric(self) -> GenerationLoss:
        return GenerationLoss()

    def update_metric(self, metric: GenerationLoss, outputs: GenerationOutputs, batch: Batch) -> None:
        metric.update(outputs.losses)

    def sample_notes(self, outputs: GenerationOutputs, batch: Batch, count: int) -> list[SampleNote]:
        """The images drawn for captions (one per distinct image), then those captions' real images in the same
        order: pictures of `2 × val_samples` samples show each drawing above its real image."""
        if outputs.images is None:
            return []
        rows = outputs.rows.tolist()[: max(1, count // 2)]
        drawn = [
            SampleNote(int(batch.image_index[row]), [f"generated: {batch.texts[row]}"], image=outputs.images[k])
            for k, row in enumerate(rows)
        ]
        real = [SampleNote(int(batch.image_index[row]), [f"real: {batch.texts[row]}"]) for row in rows]
        return drawn + real

    def predictions(self, outputs: GenerationOutputs, batch: Batch) -> list[dict[str, Any]]:
        losses = outputs.losses.loss.float().cpu().tolist()
        return [
            {"image_id": int(image_id), "caption": caption, "loss": round(loss, 6)}
            for image_id, caption, loss in zip(batch.targets.image_id.tolist(), batch.texts, losses)
        ]

    # -- prediction on a user's prompts (cmvl/tasks/prediction.py): text in, an image out ----------------------
    predict_input = "prompt"
    predict_reads_image = False

    def predict_forward(self, model: TextToImageModel, batch: Batch, options: PredictOptions) -> DrawnImages:
        """Each prompt drawn on its own (its padding trimmed) from the noise of `options.seed`, as `cmvl generate`
        draws it: an image depends on its prompt and the seed only, not on the batch it came in."""
        drawn = []
        for row in range(len(batch)):
            real = batch.attention_mask[row].bool()
            ids, mask = batch.input_ids[row][real].unsqueeze(0), batch.attention_mask[row][real].unsqueeze(0)
            drawn.append(model.generate(ids, mask, generator=torch.Generator().manual_seed(options.seed)))
        return DrawnImages(torch.cat(drawn))

    def predict_results(self, outputs: DrawnImages, batch: Batch, options: PredictOptions) -> list[GeneratedImage]:
        return [GeneratedImage(self.name, text, pixels.cpu()) for text, pixels in zip(batch.texts, outputs.images)]


def prompt_problem(tokenizer: PreTrainedTokenizerFast, prompt: str) -> str | None:
    """Why `prompt` cannot condition a generator of this tokenizer (empty, or only tokens it does not know, which
    would all read as the same [UNK]); None when it can."""
    if not prompt.strip():
        return "the prompt is empty"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    unknown = tokenizer.unk_token_id
    if not ids or (unknown is not None and all(i == unknown for i in ids)):
        return f"the run's tokenizer knows none of the words of {prompt!r} (they all map to its unknown token)"
    return None


def generate_images(
    model: TextToImageModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    *,
    n: int,
    seed: int,
    max_length: int,
    steps: int | None = None,
    guidance_scale: float | None = None,
    progress: Progress = no_progress,
) -> list[torch.Tensor]:
    """`n` images (uint8 n×3×H×W) for each prompt. Every prompt starts from the same noise, drawn from `seed`: a
    prompt's images depend on the seed and `n` only (not on the other prompts), so grids of one seed compare."""
    device = next(model.parameters()).device
    drawn = []
    for prompt in prompts:
        # Tokenised as training tokenised captions: truncated to the run's text.max_length, with special tokens.
        encoded = tokenizer([prompt] * n, truncation=True, max_length=max_length, return_tensors="pt")
        images = model.generate(
            encoded["input_ids"].to(device),
            encoded["attention_mask"].to(device),
            generator=torch.Generator().manual_seed(seed),
            steps=steps,
            guidance_scale=guidance_scale,
            progress=progress,
        )
        drawn.append(images.cpu())
    return drawn

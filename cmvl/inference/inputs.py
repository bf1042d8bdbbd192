"""A user's images and texts as a restored run's model reads them: the same decoding (EXIF orientation, alpha over
white, 16-bit grey), resize and tokenisation as the run's evaluation data, so a file predicted here gives the
numbers `cmvl eval` gives for it.

    run = cmvl.load_run("best.ckpt")
    pixels = run_images(run, ["photo.jpg", pil_image])   # U×3×S×S uint8, S = the run's image size
    input_ids, attention_mask = run_texts(run, ["What color is the circle?"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from cmvl.data.images import build_transform
from cmvl.data.text import TokenizedTexts
from cmvl.predict.images import ImageInput as ImageInput  # also names of this module, which its users import
from cmvl.predict.images import image_size as image_size
from cmvl.predict.images import open_input_image as open_input_image

if TYPE_CHECKING:
    from cmvl.run import Run


def run_images(run: Run, images: Sequence[ImageInput]) -> torch.Tensor:
    """U×3×S×S uint8 pixels of `images` for `run`'s model (resized as its evaluation split is; normalisation
    happens on the model's device, in `model.encode`)."""
    transform = build_transform(image_size=image_size(run), train=False)
    if not images:
        return torch.zeros((0, 3, image_size(run), image_size(run)), dtype=torch.uint8)
    return torch.stack([transform(open_input_image(image)) for image in images])


def run_texts(run: Run, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """`input_ids` and `attention_mask` (B×L) of `texts` under the run's tokenizer, truncated to its
    `text.max_length` and padded the way its evaluation batches are."""
    tokens = TokenizedTexts(run.tokenizer, list(texts), int(run.config.text.max_length))
    return tokens.pad([tokens.row(i) for i in range(len(texts))])


def known_token_count(run: Run, text: str) -> int:
    """How many of `text`'s tokens the run's tokenizer knows (neither padding, special, nor unknown tokens): 0 means
    the model would read nothing of it, which callers refuse in one line."""
    ids = np.asarray(run.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    unknown = run.tokenizer.unk_token_id
    return int((ids != unknown).sum()) if unknown is not None else len(ids)

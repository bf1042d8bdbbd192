"""The interface every image generator of the `generator` family follows (`generator=cvae`, `generator=diffusion`).

A generator works on images scaled to [-1, 1] (B×3×H×W float) and a text condition: the run's text encoder tokens,
projected to `model.dim` (`Tokens`, B×L×D with a mask). It returns its training objective (`losses`) and draws
images for a condition (`sample`). The family holds the text encoder and the learnt "no caption" condition that
classifier-free guidance and condition dropout use; the generator only reads the tokens it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from cmvl.batch import TensorRecord
from cmvl.errors import ConfigError
from cmvl.models.tokens import Tokens

Progress = Callable[[Iterable[int], int], Iterable[int]]  # progress(steps, total) → the same steps, reported


def no_progress(steps: Iterable[int], total: int) -> Iterable[int]:
    del total
    return steps


@dataclass
class GeneratorLosses(TensorRecord):
    """Per-sample terms of a generator's objective (each B, float32): `loss` is what training minimises (its
    batch mean) and what validation reports; `reconstruction` is the image term alone (the CVAE's reconstruction
    error, the diffusion model's noise-prediction error), comparable across KL weights and epochs."""

    loss: torch.Tensor
    reconstruction: torch.Tensor


class ImageGenerator(nn.Module):
    """Base class of the generators. `cond_dropout`: the share of training samples whose caption is replaced by
    the "no caption" condition (classifier-free guidance learns the unconditional model from them)."""

    cond_dropout: float = 0.0
    default_steps: int = 1  # sampling steps when the caller does not choose (1 for one-shot decoders)
    default_guidance: float = 1.0  # classifier-free guidance scale when the caller does not choose (1 = none)

    def __init__(self, *, image_size: int, dim: int) -> None:
        super().__init__()
        self.image_size, self.dim = image_size, dim

    def losses(
        self, images: torch.Tensor, cond: Tokens, *, generator: torch.Generator | None = None
    ) -> GeneratorLosses:
        """The objective for `images` (B×3×H×W in [-1, 1]) given their captions' tokens. `generator`: where the
        noise comes from (None: torch's global RNG, which training checkpoints; validation passes a seeded one, so
        its numbers do not depend on the training RNG)."""
        raise NotImplementedError

    def sample(
        self,
        cond: Tokens,
        uncond: Tokens,
        *,
        generator: torch.Generator,
        steps: int | None = None,
        guidance_scale: float | None = None,
        progress: Progress = no_progress,
    ) -> torch.Tensor:
        """Images B×3×H×W in [-1, 1] for the B conditions; `uncond`: the "no caption" condition (B rows), used by
        classifier-free guidance. The same `generator` state gives the same images."""
        raise NotImplementedError


def check_image_size(size: int, multiple: int, what: str) -> None:
    """Refuse, in one line, an image side the generator's down/up-sampling cannot reproduce exactly."""
    if size < multiple or size % multiple:
        raise ConfigError(
            f"data.image.size={size}: {what} needs an image side that is a multiple of {multiple} "
            f"(set vision.image_size or data.image.size, e.g. 32 or 64)"
        )


def randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of `shape`, on the device and in the dtype of `like`, drawn from `generator` (on the
    CPU, so the same seed gives the same numbers on every device) or torch's global RNG."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)

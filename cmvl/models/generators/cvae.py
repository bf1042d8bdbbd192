"""`generator=cvae`: a conditional variational autoencoder, the CPU default of text-to-image generation.

The encoder q(z | image, caption) is a strided conv stack; the decoder p(image | z, caption) upsamples a latent grid
with residual conv blocks that read the caption twice: FiLM (a per-channel scale and shift from the pooled caption)
and cross-attention from every grid cell to the caption's tokens (so "a red circle left of a blue square" can put
each colour in its place). Learnt positions on the decoder's first grid give the attention queries a place.
The objective is the negative ELBO per pixel: a Gaussian reconstruction term plus the KL to the prior, whose weight
ramps up from 0 over `kl_warmup_steps` training steps (the KL warm-up that keeps the latent from collapsing early).

The prior is `prior=conditional` (default): p(z | caption), a Gaussian whose mean and variance a small network reads
from the pooled caption (Sohn et al. 2015), so sampling draws the latents that images of *that* caption have; with
`prior=standard` it is N(0, I), and a latent sampled from it describes a random scene that the caption barely steers.
Samples draw z = mean + `temperature` · std · noise from the prior (temperature < 1: more typical images).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cmvl.errors import ConfigError
from cmvl.models.attention import MultiHeadAttention
from cmvl.models.generators.base import GeneratorLosses, ImageGenerator, Progress, check_image_size, no_progress, randn
from cmvl.models.tokens import Tokens

PRIORS = ("conditional", "standard")


def gaussian_kl(
    mean: torch.Tensor, log_var: torch.Tensor, prior_mean: torch.Tensor, prior_log_var: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean, e^log_var) || N(prior_mean, e^prior_log_var)) per latent dimension."""
    return 0.5 * (prior_log_var - log_var + (log_var.exp() + (mean - prior_mean).square()) / prior_log_var.exp() - 1)


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class FiLMResBlock(nn.Module):
    """conv → norm → FiLM(caption) → SiLU → conv, with a residual; optional cross-attention to the caption tokens."""

    def __init__(self, channels: int, dim: int, heads: int, attend: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.film = nn.Linear(dim, 2 * channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.attend = attend
        if attend:
            self.to_query = nn.LayerNorm(channels)
            self.text_to_channels = nn.Linear(dim, channels)
            self.attention = MultiHeadAttention(channels, heads, heads_key="generator.heads")

    def forward(self, x_BCHW: torch.Tensor, pooled_BD: torch.Tensor, cond: Tokens) -> torch.Tensor:
        scale, shift = self.film(pooled_BD)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(self.conv1(x_BCHW)) * (1 + scale) + shift)
        x_BCHW = x_BCHW + self.norm2(self.conv2(h))
        if not self.attend:
            return x_BCHW
        b, c, height, width = x_BCHW.shape
        cells_BNC = x_BCHW.flatten(2).transpose(1, 2)
        text_BLC = self.text_to_channels(cond.feats)
        attended, _ = self.attention(self.to_query(cells_BNC), text_BLC, text_BLC, key_padding_mask=~cond.mask)
        return x_BCHW + attended.transpose(1, 2).reshape(b, c, height, width)


class ConditionalVAE(ImageGenerator):
    """A CVAE over images of side `image_size` (a multiple of 2**levels), conditioned on text tokens at `dim`."""

    def __init__(
        self,
        *,
        image_size: int,
        dim: int,
        latent_dim: int = 32,
        channels: int = 32,
        levels: int = 3,
        heads: int = 4,
        kl_weight: float = 1.0,
        kl_warmup_steps: int = 500,
        recon_sigma: float = 0.1,
        cond_dropout: float = 0.0,
        prior: str = "conditional",
        temperature: float = 1.0,
    ) -> None:
        super().__init__(image_size=image_size, dim=dim)
        check_image_size(image_size, 2**levels, f"generator=cvae with levels={levels}")
        if recon_sigma <= 0 or kl_weight < 0 or kl_warmup_steps < 0 or latent_dim < 1 or not 0 <= cond_dropout < 1:
            raise ConfigError(
                "generator: recon_sigma must be > 0, kl_weight and kl_warmup_steps >= 0, latent_dim >= 1 and "
                f"cond_dropout in [0, 1) (got {recon_sigma}, {kl_weight}, {kl_warmup_steps}, {latent_dim}, "
                f"{cond_dropout})"
            )
        if prior not in PRIORS or temperature < 0:
            raise ConfigError(
                f"generator: prior must be one of {', '.join(PRIORS)} and temperature >= 0 (got {prior!r}, "
                f"{temperature})"
            )
        self.prior, self.temperature = prior, temperature
        self.latent_dim, self.levels, self.kl_weight = latent_dim, levels, kl_weight
        self.kl_warmup_steps, self.recon_sigma, self.cond_dropout = kl_warmup_steps, recon_sigma, cond_dropout
        self.grid = image_size // 2**levels
        widths = [channels * min(2**i, 4) for i in range(levels)]  # e.g. 64, 128, 256
        self.widths = widths
        # Encoder: image → latent mean and log-variance (the caption joins at the end).
        layers: list[nn.Module] = []
        previous = 3
        for width in widths:
            layers += [
                nn.Conv2d(previous, width, 4, stride=2, padding=1),
                nn.GroupNorm(_groups(width), width),
                nn.SiLU(),
            ]
            previous = width
        self.encoder = nn.Sequential(*layers)
        self.posterior = nn.Linear(widths[-1] * self.grid**2 + dim, 2 * latent_dim)
        # Decoder: (z, pooled caption) → a grid at the coarsest level → upsampled to the image.
        self.from_latent = nn.Linear(latent_dim + dim, widths[-1] * self.grid**2)
        self.positions = nn.Parameter(torch.zeros(1, widths[-1], self.grid, self.grid))
        nn.init.normal_(self.positions, std=0.02)
        self.blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(levels)):
            width = widths[level]
            self.blocks.append(FiLMResBlock(width, dim, heads, attend=True))
            below = widths[level - 1] if level > 0 else channels
            self.upsamples.append(nn.ConvTranspose2d(width, below, 4, stride=2, padding=1))
        self.to_image = nn.Sequential(
            nn.GroupNorm(_groups(channels), channels), nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1)
        )
        # p(z | caption): mean and log-variance from the pooled caption (prior=conditional only).
        if prior == "conditional":
            self.prior_net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, 2 * latent_dim))
        # Training steps seen, for the KL warm-up: a buffer, so a checkpoint (and an exact resume) carries it.
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.int64))

    def decode(self, z_BZ: torch.Tensor, cond: Tokens) -> torch.Tensor:
        """Latents B×latent_dim and the captions' tokens → images B×3×H×W in [-1, 1]."""
        pooled = cond.pooled_mean()
        x = self.from_latent(torch.cat([z_BZ, pooled], dim=1)).view(-1, self.widths[-1], self.grid, self.grid)
        x = x + self.positions
        for block, upsample in zip(self.blocks, self.upsamples, strict=True):
            x = upsample(block(x, pooled, cond))
        return torch.tanh(self.to_image(x))

    def prior_stats(self, pooled_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior's mean and log-variance (B×latent_dim, float32) for pooled captions; zeros for N(0, I)."""
        if self.prior == "standard":
            zeros = torch.zeros(pooled_BD.shape[0], self.latent_dim, device=pooled_BD.device)
            return zeros, zeros
        mean, log_var = self.prior_net(pooled_BD).float().chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)

    def kl_scale(self) -> torch.Tensor:
        """The KL weight at this training step: kl_weight · min(1, steps / kl_warmup_steps), as a tensor (no sync)."""
        if self.kl_warmup_steps == 0:
            return torch.tensor(self.kl_weight, device=self.steps_seen.device)
        ramp = (self.steps_seen.float() / self.kl_warmup_steps).clamp(max=1.0)
        return self.kl_weight * ramp

    def losses(
        self, images: torch.Tensor, cond: Tokens, *, generator: torch.Generator | None = None
    ) -> GeneratorLosses:
        pooled = cond.pooled_mean()
        stats = self.posterior(torch.cat([self.encoder(images).flatten(1), pooled], dim=1)).float()
        mean, log_var = stats.chunk(2, dim=1)
        log_var = log_var.clamp(-12.0, 8.0)
        if self.training:
            z = mean + torch.exp(0.5 * log_var) * randn(mean.shape, generator, mean)
            kl_scale = self.kl_scale()
            self.steps_seen += 1
        else:  # validation: the posterior mean and the full KL, so the number is deterministic and comparable
            z, kl_scale = mean, torch.tensor(self.kl_weight, device=mean.device)
        recon = self.decode(z.to(cond.feats.dtype), cond).float()
        pixels = images[0].numel()
        # Gaussian log-likelihood with a fixed sigma, up to a constant; per pixel, so sizes compare.
        reconstruction = (recon - images.float()).square().flatten(1).sum(1) / (2 * self.recon_sigma**2 * pixels)
        prior_mean, prior_log_var = self.prior_stats(pooled)
        kl = gaussian_kl(mean, log_var, prior_mean, prior_log_var).sum(1) / pixels
        return GeneratorLosses(loss=reconstruction + kl_scale * kl, reconstruction=reconstruction)

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
        del steps  # one decoder pass
        scale = self.default_guidance if guidance_scale is None else guidance_scale
        noise = randn((cond.feats.shape[0], self.latent_dim), generator, cond.feats).float()

        def latent(tokens: Tokens) -> torch.Tensor:
            mean, log_var = self.prior_stats(tokens.pooled_mean())
            return (mean + self.temperature * torch.exp(0.5 * log_var) * noise).to(tokens.feats.dtype)

        for _ in progress(range(1), 1):
            images = self.decode(latent(cond), cond)
            if scale != 1.0:  # guidance in image space: uncond + s · (cond - uncond), from the same noise
                base = self.decode(latent(uncond), uncond)
                images = (base + scale * (images - base)).clamp(-1, 1)
        return images

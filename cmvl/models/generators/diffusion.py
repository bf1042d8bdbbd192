"""`generator=diffusion`: a text-conditioned denoising diffusion model built from `diffusers` parts.

A `UNet2DConditionModel` predicts the noise added to an image, cross-attending to the caption's tokens; training is
DDPM's (a random timestep per image, `DDPMScheduler.add_noise`, MSE on the noise), sampling is DDIM's
(`DDIMScheduler`, `steps` denoising steps, deterministic for a seed) with classifier-free guidance: the
"no caption" condition the model learnt from the `cond_dropout` share of training samples is run beside the
caption and the two noise predictions are mixed with `guidance_scale`. The GPU option; at tiny block widths it runs
(slowly) on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from cmvl.errors import ConfigError
from cmvl.models.generators.base import GeneratorLosses, ImageGenerator, Progress, check_image_size, no_progress, randn
from cmvl.models.tokens import Tokens

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class TextDiffusion(ImageGenerator):
    """DDPM-trained, DDIM-sampled UNet over images of side `image_size`, conditioned on text tokens at `dim`."""

    def __init__(
        self,
        *,
        image_size: int,
        dim: int,
        block_channels: list[int] | tuple[int, ...] = (64, 128, 128),
        layers_per_block: int = 1,
        attention_head_dim: int = 8,
        norm_groups: int = 8,
        train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        sample_steps: int = 50,
        guidance_scale: float = 3.0,
        cond_dropout: float = 0.1,
    ) -> None:
        super().__init__(image_size=image_size, dim=dim)
        block_channels = [int(c) for c in block_channels]
        check_image_size(
            image_size, 2 ** (len(block_channels) - 1), f"generator=diffusion with {len(block_channels)} blocks"
        )
        if beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"generator.beta_schedule={beta_schedule}: choose one of {', '.join(BETA_SCHEDULES)}")
        if any(c % norm_groups for c in block_channels):
            raise ConfigError(
                f"generator.block_channels={block_channels}: each must be a multiple of "
                f"generator.norm_groups={norm_groups}"
            )
        if not 0 <= cond_dropout < 1 or sample_steps < 1 or train_timesteps < sample_steps:
            raise ConfigError(
                "generator: cond_dropout must be in [0, 1) and 1 <= sample_steps <= train_timesteps (got "
                f"{cond_dropout}, {sample_steps}, {train_timesteps})"
            )
        self.cond_dropout, self.default_steps, self.default_guidance = cond_dropout, sample_steps, guidance_scale
        # The coarsest block has no attention (as in Stable Diffusion's UNet, the other way round: there the finest
        # one has none); every other block cross-attends to the caption.
        down = ["CrossAttnDownBlock2D"] * (len(block_channels) - 1) + ["DownBlock2D"]
        up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (len(block_channels) - 1)
        self.unet = UNet2DConditionModel(
            sample_size=image_size,
            in_channels=3,
            out_channels=3,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            block_out_channels=tuple(block_channels),
            layers_per_block=layers_per_block,
            cross_attention_dim=dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_groups,
        )
        self.noise_schedule = DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule=beta_schedule)

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Tokens) -> torch.Tensor:
        return self.unet(
            noisy, timesteps, encoder_hidden_states=cond.feats, encoder_attention_mask=cond.mask.to(noisy.dtype)
        ).sample

    def losses(
        self, images: torch.Tensor, cond: Tokens, *, generator: torch.Generator | None = None
    ) -> GeneratorLosses:
        b = images.shape[0]
        noise = randn(tuple(images.shape), generator, images)
        total = self.noise_schedule.config.num_train_timesteps
        if generator is None:
            timesteps = torch.randint(0, total, (b,), device=images.device)
        else:
            timesteps = torch.randint(0, total, (b,), generator=generator).to(images.device)
        noisy = self.noise_schedule.add_noise(images, noise, timesteps)
        error = F.mse_loss(self.predict_noise(noisy, timesteps, cond).float(), noise.float(), reduction="none")
        per_sample = error.flatten(1).mean(1)
        return GeneratorLosses(loss=per_sample, reconstruction=per_sample)

    @torch.no_grad()
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
        steps = self.default_steps if steps is None else steps
        scale = self.default_guidance if guidance_scale is None else guidance_scale
        sampler = DDIMScheduler.from_config(self.noise_schedule.config)
        sampler.set_timesteps(steps)
        b = cond.feats.shape[0]
        x = randn((b, 3, self.image_size, self.image_size), generator, cond.feats)
        guided = scale != 1.0
        if guided:
            length = max(cond.feats.shape[1], uncond.feats.shape[1])
            pair = _stack(_pad_to(cond, length), _pad_to(uncond, length))
        for t in progress(sampler.timesteps.tolist(), len(sampler.timesteps)):
            timestep = torch.full((b,), t, device=x.device, dtype=torch.int64)
            if guided:  # one UNet pass over [caption, no caption]
                eps_cond, eps_uncond = self.predict_noise(
                    torch.cat([x, x]), torch.cat([timestep, timestep]), pair
                ).chunk(2)
                eps = eps_uncond + scale * (eps_cond - eps_uncond)
            else:
                eps = self.predict_noise(x, timestep, cond)
            x = sampler.step(eps, t, x, eta=0.0).prev_sample
        return x.clamp(-1, 1)


def _pad_to(tokens: Tokens, length: int) -> Tokens:
    """`tokens` padded with masked-out zeros to `length` tokens."""
    extra = length - tokens.feats.shape[1]
    if extra == 0:
        return tokens
    return Tokens(F.pad(tokens.feats, (0, 0, 0, extra)), F.pad(tokens.mask, (0, extra), value=False))


def _stack(first: Tokens, second: Tokens) -> Tokens:
    """Two batches of tokens of the same length, one after the other along the batch axis."""
    return Tokens(torch.cat([first.feats, second.feats]), torch.cat([first.mask, second.mask]))

"""A1111's loaded model (``shared.sd_model``: ldm's ``LatentDiffusion``, sgm's ``DiffusionEngine``), as far as the
A1111 adapter reads it directly; what only some model families have (``is_sdxl``, ``parameterization``,
``first_stage_model``, ...) is read with ``getattr`` and a default where it is read."""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from ..webui.objects import ConditioningModel


class DiffusionWrapper(Protocol):
    """``sd_model.model``: the wrapper around the UNet."""

    diffusion_model: nn.Module


class Posterior(Protocol):
    """ldm's VAE posterior (``DiagonalGaussianDistribution``)."""

    mean: Tensor


class LatentDiffusion(ConditioningModel, Protocol):
    """The loaded SD1.x/SD2.x/SDXL model, with A1111's casts and hijacks in place."""

    model: DiffusionWrapper
    alphas_cumprod: Tensor

    def encode_first_stage(self, x: Tensor) -> Tensor | Posterior:
        """The VAE's encoding of pixels: ldm's posterior, or sgm's already sampled and scaled latent."""
        ...

    def get_first_stage_encoding(self, encoded: Tensor) -> Tensor:
        """The scaled latent of an encoding."""
        ...

    def apply_model(self, x: Tensor, t: Tensor, cond: dict[str, Any]) -> Tensor:
        """The UNet's output (eps or v) for VP latents at timesteps ``t``, with A1111's casts."""
        ...

    def decode_first_stage(self, z: Tensor) -> Tensor:
        """Pixels in [-1, 1] of a latent."""
        ...

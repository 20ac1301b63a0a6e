"""What a RIVAL generation needs from the program that runs the model: the ``Host`` seam.

The A1111 job (``rival_ext.a1111.job``) talks to its model only through this protocol;
``rival_ext.a1111.model.A1111Host`` implements it on A1111's loaded model. Another host (a plain
diffusers or ComfyUI driver, a test double) implements the same members.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from PIL import Image
from torch import Tensor, nn

from .conditioning import Conditioning
from .eps_models import EpsModel, UNetEps
from .noise import DiscreteSchedule


class UnsupportedModel(Exception):
    """RIVAL cannot run on this model or with this combination; the message says why."""


@dataclass
class PassLevels:
    """The noise levels one sampling pass visits, in the sampler's own terms."""

    sigmas: Tensor  # VE, descending, last = origin (0 or sigma_min)
    timesteps: bool  # DDIM/PLMS/UniPC family: the denoiser's "sigma" is a timestep, latents VP
    txt2img: bool  # the sampler starts from unit noise (else from an init latent plus noise)
    sampler_sigmas: Tensor | None = None  # the whole schedule the k-diffusion sampler must use instead


class Host(Protocol):
    """The loaded model as a RIVAL generation uses it."""

    model: object  # the host's own model object (the job checks it is still the one loaded)

    def check_supported(self) -> None:
        """Raise ``UnsupportedModel`` where RIVAL would be wrong on this model."""

    @property
    def unet(self) -> nn.Module:
        """The UNet whose self-attention RIVAL hooks."""

    @property
    def schedule(self) -> DiscreteSchedule:
        """The model's noise schedule (float64)."""

    @property
    def parameterization(self) -> str:
        """'eps' or 'v'."""

    @property
    def is_sdxl(self) -> bool:
        """Whether text rows carry pooled vectors (and empty negatives are zeroed)."""

    @property
    def identity(self) -> str:
        """A string that changes when the weights in effect change (chain cache key)."""

    @property
    def low_vram(self) -> bool:
        """Whether modules move on demand (no direct fp32 UNet call)."""

    def pass_levels(self, p: object, txt2img: bool, hires: bool) -> PassLevels:
        """The noise levels the pass about to sample visits."""

    def encode_reference(self, pixels: Tensor) -> Tensor:
        """The reference's latent (VAE mean, scaled)."""

    def encode_text(self, text: str, negative: bool, width: int, height: int) -> Conditioning:
        """One conditioning row for ``text``."""

    def eps_model(self) -> EpsModel:
        """eps(z, t, cond) in the model's own precision, for the inversion."""

    def full_precision(self) -> AbstractContextManager[UNetEps]:
        """An fp32 eps model of the UNet for the block."""

    def class_forward(self) -> AbstractContextManager[None]:
        """The UNet's own forward for the block (without another extension's)."""

    def decode(self, latent: Tensor) -> Image.Image:
        """A latent as an image (the reconstruction preview)."""

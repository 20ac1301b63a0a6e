"""A Forge fork's loaded model (``sd_model`` with its ``forge_objects``), as far as the Forge adapter reads it
directly: Forge and Forge Neo ("Forge2", ``backend``) and reForge and Forge Classic (the ComfyUI-style patcher,
``ldm_patched``). What only one family has (Forge2's ``predictor``, ComfyUI's ``model_type``, the patcher's
``lora_patches``, ...) is read with ``getattr`` and a default where it is read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..webui.objects import ConditioningModel


class Predictor(Protocol):
    """The model's noise schedule: Forge2's ``predictor``, ComfyUI's ``model_sampling``."""

    sigmas: Tensor


class Posterior(Protocol):
    """Forge2's VAE posterior (its ``model_vae_regulation`` gets it)."""

    def mode(self) -> Tensor:
        """The posterior's mode (its mean)."""
        ...


class Denoiser(Protocol):
    """The patcher's model (Forge2's ``KModel``, ComfyUI's ``BaseModel``): ``apply_model`` gives x0."""

    diffusion_model: nn.Module
    model_sampling: Predictor  # ComfyUI's (Forge2's models have a ``predictor`` instead)

    def apply_model(self, x: Tensor, t: Tensor, **c: Any) -> Tensor:
        """x0 of VE latents ``x`` at sigmas ``t``, under the patcher's options in ``c['transformer_options']``."""
        ...


class UnetPatcher(Protocol):
    """The UNet patcher (``forge_objects.unet``), cloned for every sampling pass; its options hold the patches."""

    model: Denoiser
    model_options: dict[str, Any]
    load_device: torch.device | str

    def model_dtype(self) -> torch.dtype:
        """The dtype the UNet's weights are stored in."""
        ...

    def clone(self) -> UnetPatcher:
        """A patcher over the same model with copies of its options."""
        ...

    def set_model_attn1_patch(self, patch: Callable[..., Any]) -> None:
        """Add a patch of every self-attention layer's inputs (hidden states, context, value)."""
        ...

    def set_model_attn1_output_patch(self, patch: Callable[..., Any]) -> None:
        """Add a patch of every self-attention layer's output."""
        ...

    def set_model_unet_function_wrapper(self, wrapper: Callable[..., Any]) -> None:
        """Put ``wrapper`` around the denoiser's calls (it replaces the one there)."""
        ...


class ForgeObjects(Protocol):
    """``sd_model.forge_objects``: the UNet patcher the sampler uses and the VAE."""

    unet: UnetPatcher
    vae: object


class ForgeModel(ConditioningModel, Protocol):
    """The loaded model a Forge fork hands an extension."""

    forge_objects: ForgeObjects

    def encode_first_stage(self, x: Tensor) -> Tensor:
        """The scaled latent of pixels in [-1, 1], through Forge's VAE and its memory management."""
        ...

    def decode_first_stage(self, z: Tensor) -> Tensor:
        """Pixels in [-1, 1] of a latent."""
        ...

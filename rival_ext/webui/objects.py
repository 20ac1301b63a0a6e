"""The WebUI's own objects, as far as RIVAL reads or sets them: A1111's script API, kept by every fork.

These are Protocols of what the WebUI layer and the host adapters touch directly; an attribute that only some
passes or WebUIs have is read with ``getattr`` and a default where it is read, and is not listed here. The WebUI's
modules themselves carry no types (``modules.shared.sd_model`` is untyped where RIVAL reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeGuard

import torch
from PIL import Image
from torch import Tensor


class KDiffusionSampler(Protocol):
    """A k-diffusion sampler (``KDiffusionSampler``, Forge's ``KDiffusionSampler``)."""

    def get_sigmas(self, p: Processing, steps: int) -> Tensor: ...


class TimestepsSampler(Protocol):
    """A sampler of the DDIM/PLMS/UniPC family (``CompVisSampler``): it visits timesteps."""

    def get_timesteps(self, p: Processing, steps: int) -> Tensor: ...


def has_sigmas(sampler: object) -> TypeGuard[KDiffusionSampler]:
    """Whether the sampler gives its noise levels as sigmas."""
    return hasattr(sampler, "get_sigmas")


def has_timesteps(sampler: object) -> TypeGuard[TimestepsSampler]:
    """Whether the sampler gives its noise levels as timesteps."""
    return hasattr(sampler, "get_timesteps")


class Processing(Protocol):
    """``p``: the generation (``StableDiffusionProcessing`` and its txt2img and img2img kinds)."""

    sampler: object  # the pass's sampler: has_sigmas or has_timesteps tells which kind
    steps: int
    width: int
    height: int
    extra_generation_params: dict[str, object]  # the infotext's entries
    sample: Callable[..., Any]  # runs the sampler for one batch (RIVAL wraps it for the job's lifetime)
    hr_second_pass_steps: int  # txt2img's: read in its hires pass only
    modified_noise: Tensor | None  # Forge's: the start noise the sampler takes instead of its own


class Shaped(Protocol):
    """A tensor, or SDXL's conditioning dict that carries the shape of its rows (A1111's ``DictWithShape``)."""

    @property
    def shape(self) -> torch.Size: ...


class CFGDenoiser(Protocol):
    """The sampler's ``CFGDenoiser``: its inpainting mask, which blends the original latent back in."""

    mask: Tensor | None


class CFGDenoiserParams(Protocol):
    """``on_cfg_denoiser``'s argument: the model's input for one evaluation (reassigning ``x`` is honoured)."""

    x: Tensor
    sigma: Tensor
    text_cond: Shaped
    text_uncond: Shaped
    denoiser: CFGDenoiser


class AfterCFGCallbackParams(Protocol):
    """``on_cfg_after_cfg``'s argument: the guided prediction (reassigning ``x`` is honoured)."""

    x: Tensor


class Processed(Protocol):
    """``postprocess``'s result of the generation: the gallery's images and their infotexts."""

    images: list[Image.Image]
    infotexts: list[str]


class ConditioningModel(Protocol):
    """A loaded model's text encoder, as A1111's ``sd_model`` offers it in every fork."""

    def get_learned_conditioning(self, prompts: Any) -> Tensor | dict[str, Tensor]:
        """Rows for ``prompts`` (a list, or A1111's ``SdConditioning``): SDXL's as a dict with its pooled vector."""
        ...


class PanelScript(Protocol):
    """RIVAL's ``scripts.Script`` while its panel is built: A1111's members and what the panel keeps on it."""

    infotext_fields: list[tuple[object, object]]
    paste_field_names: list[str]
    rival_result_button: tuple[object, object, object]  # "Use the selected result", its index, the image
    rival_official_button: tuple[object, object]  # "Use the official ...", the preset box
    rival_official_wired: bool

    def elem_id(self, item_id: str) -> str:
        """The element id of a control of the script's panel in its tab."""
        ...

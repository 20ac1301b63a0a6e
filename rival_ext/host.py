"""What a RIVAL generation needs from the program that runs the model: the ``Host`` seam.

The job (``rival_ext.job``) talks to its model only through this protocol: A1111's
(``rival_ext.a1111.A1111Host``, module hooks on ldm/sgm) and Forge's (``rival_ext.forge.ForgeHost``,
patches on the per-sampling UNet clone, Forge2 and the ComfyUI-style patcher of reForge/Classic)
implement it; a test double or another program implements the same members. What the WebUI tells
the job about the pass about to sample is a ``PassRequest``; progress, interruption and the settings
reach it as a ``Runtime``. The WebUI's own object for the pass (A1111's ``p``) travels through the
job to the host unread: ``Host`` is generic in its type, and ``ModelHost`` is the part that needs none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from PIL import Image
from torch import Tensor

from .conditioning import Conditioning, Role
from .eps_models import EpsModel
from .feature_cache import FeatureCache
from .noise import DiscreteSchedule
from .params import RivalParams
from .reference_rows import Evaluation, Reference

P_contra = TypeVar("P_contra", contravariant=True)  # the WebUI's object for a pass (A1111's ``p``), opaque here


class UnsupportedModel(Exception):
    """RIVAL cannot run on this model or with this combination; the message says why."""


@dataclass
class PassLevels:
    """The noise levels one sampling pass visits, in the sampler's own terms."""

    sigmas: Tensor  # VE, descending, last = origin (0 or sigma_min)
    timesteps: bool  # DDIM/PLMS/UniPC family: the sampler's latents are VP and its levels timesteps
    txt2img: bool  # the sampler starts from unit noise (else from an init latent plus noise)
    sampler_sigmas: Tensor | None = None  # the whole schedule the k-diffusion sampler must use instead


@dataclass(frozen=True)
class PassRequest:
    """The pass about to sample, as the WebUI describes it (the same in every WebUI: A1111's ``p``)."""

    prompt: str  # the batch's first prompt, extra-network tags stripped
    seeds: list[int]  # one per image of the batch
    width: int
    height: int
    txt2img: bool  # starts from noise (else from an init latent: img2img, the hires pass)
    hires: bool  # the hires fix's second pass
    init_image: Image.Image | None = None  # img2img's first init image, as the WebUI encodes it (resized)
    init_latent: Tensor | None = None  # the latent the WebUI encoded (img2img), one row per image
    regenerate: Tensor | None = None  # inpainting: the latent-grid mask to regenerate (bool), None: no mask
    masked: bool = False  # img2img's inpaint tab has a mask


@dataclass(frozen=True)
class AlignmentSpec:
    """What a pass aligns to: the parameters, the references (the first is the main one), the feature cache,
    the latent-grid mask of where RIVAL acts and the self-attention layers it acts on (None: all)."""

    params: RivalParams
    references: tuple[Reference, ...]
    features: FeatureCache | None = None
    where: Tensor | None = None
    selected: frozenset[int] | None = None


class Alignment(Protocol):
    """What a pass installs: evaluations opened by ``begin`` and closed by ``after_guidance``."""

    @property
    def evaluation(self) -> Evaluation | None:
        """The open evaluation, if any."""

    def begin(self, sigma: float, t: float, roles: Sequence[Role], x: Tensor | None = None) -> Evaluation:
        """Open a model evaluation (``x``: the sampler's latents, one row per image)."""

    def after_guidance(self, guided: Tensor, x: Tensor | None = None) -> Tensor:
        """Close it, with AdaIN of the guided prediction while t > t_early."""

    def close(self) -> None:
        """Take the mechanism off the model (idempotent)."""


class Progress(Protocol):
    """The WebUI's progress bar and interrupt button, for the inversion."""

    def text(self, text: str) -> AbstractContextManager[None]:
        """Show ``text`` as the job's status for the block, then what was there before."""

    def step(self, done: int, total: int) -> None:
        """Report progress; raises ``InversionInterrupted`` when the user pressed Interrupt or Skip."""


class InversionInterrupted(Exception):
    """The user pressed Interrupt or Skip during the inversion."""


@dataclass(frozen=True)
class Settings:
    """The WebUI settings a generation reads (Settings > RIVAL and a few of the WebUI's own)."""

    inversion_steps: int = 0  # 0: as many as the sampler takes
    inversion_precision: str = "fp32"  # fp32 | model
    feature_cache_bytes: int = 0  # 0: no feature cache
    feature_cache_device_bytes: int = 0  # of which on the GPU
    img2img_extra_noise: bool = False  # the WebUI adds extra noise to an img2img start
    sgm_noise_multiplier: bool = False  # txt2img noise scaled by sqrt(1 + sigma^2) instead of sigma


class ModelHost(Protocol):
    """The loaded model as a RIVAL generation uses it."""

    @property
    def model(self) -> object:
        """The host's own model object (the job checks it is still the one loaded)."""

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
        """A string that changes when the weights in effect or their precision change (chain cache key)."""

    @property
    def fp32_unavailable(self) -> str | None:
        """Why no fp32 copy of the UNet can run the inversion (modules move on demand, ...); None: it can."""

    @property
    def on_gpu(self) -> bool:
        """Whether the model computes on a GPU (the feature cache keeps part of itself there)."""

    def callbacks_vp(self, levels: PassLevels) -> bool:
        """Whether the sampler's CFG callbacks carry VP latents, timesteps and eps (else VE, sigma, x0)."""

    @property
    def stacked_cfg_rows(self) -> bool:
        """Whether the CFG callbacks' latents hold every row the model gets, uncond rows last (else one per image)."""

    def encode_reference(self, pixels: Tensor) -> Tensor:
        """The reference's latent (VAE mean, scaled)."""

    def encode_text(self, text: str, negative: bool, width: int, height: int) -> Conditioning:
        """One conditioning row for ``text``."""

    def eps_model(self) -> EpsModel:
        """eps(z, t, cond) in the model's own precision, for the inversion."""

    def full_precision(self) -> AbstractContextManager[EpsModel]:
        """An fp32 eps model of the UNet for the block."""

    def plain_model(self) -> AbstractContextManager[None]:
        """The UNet's own path for the block (without another extension's), for the inversion."""

    def free_memory(self) -> None:
        """Give cached GPU memory back (after an out-of-memory error)."""

    def decode(self, latent: Tensor) -> Image.Image:
        """A latent as an image (the reconstruction preview)."""

    @property
    def layer_keys(self) -> list[tuple[str, int, int]]:
        """Each self-attention layer's place (``attention.block_key``), in the order RIVAL indexes them."""


class Host(ModelHost, Protocol[P_contra]):
    """The loaded model and the pass it samples, which the WebUI describes by its own object ``p``."""

    def check_supported(self, p: P_contra | None = None) -> None:
        """Raise ``UnsupportedModel`` where RIVAL would be wrong on this model (or in this request ``p``)."""

    def pass_levels(self, p: P_contra, txt2img: bool, hires: bool) -> PassLevels:
        """The noise levels the pass about to sample visits."""

    def align(self, p: P_contra, spec: AlignmentSpec) -> Alignment:
        """Install RIVAL's mechanism on the model for the pass about to sample."""

    def override_schedule(self, p: P_contra, sigmas: Tensor) -> Callable[[], None]:
        """Make the pass's k-diffusion sampler use ``sigmas``; returns what puts the sampler's own back."""

    def set_start_noise(self, p: P_contra, x: Tensor, noise: Tensor, start_noise: Tensor, txt2img: bool) -> None:
        """Make the sampler take ``start_noise`` instead of its own (``x`` in txt2img, ``noise`` otherwise)."""

"""What RIVAL needs from a Forge fork's loaded model: ``ForgeHost``, the library's ``Host`` there.

Forge and Forge Neo ("Forge2", ``backend``) and reForge and Forge Classic (the ComfyUI-style patcher,
``ldm_patched``) hand an extension ``sd_model.forge_objects``: the UNet patcher (cloned before every
sampling pass, its model the denoiser ``apply_model(x, sigma, c_crossattn=, y=)`` returning x0), the
VAE and the text encoders behind A1111's ``encode_first_stage``/``get_learned_conditioning``. The
noise schedule is the patcher's predictor (Forge2) or ``model_sampling`` (ComfyUI). RIVAL's mechanism
is the patch API on the pass's clone (``patches.ForgeAlignment``); nothing is put on the modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..attention import block_key, find_self_attention
from ..conditioning import Conditioning
from ..eps_models import EpsModel
from ..host import AlignmentSpec, PassLevels, UnsupportedModel
from ..noise import DiscreteSchedule, vp_to_ve
from ..webui.objects import Processing
from ..webui.sampling import override_schedule, pass_levels
from ..webui.text import encode_text
from .objects import Denoiser, ForgeModel, Posterior, Predictor, UnetPatcher
from .patches import ForgeAlignment


class ForgeHost:
    """``rival_ext.host.Host`` on a Forge fork's loaded model (one sampling pass)."""

    stacked_cfg_rows = False  # on_cfg_denoiser's x is one row per image; Forge batches the rows itself

    def __init__(self, sd_model: ForgeModel) -> None:
        self.model = sd_model

    @property
    def patcher(self) -> UnetPatcher:
        """The UNet patcher the sampler will use (the pass's clone once RIVAL or another extension made it)."""
        return self.model.forge_objects.unet

    @property
    def denoiser(self) -> Denoiser:
        """The patcher's model: Forge2's ``KModel``, ComfyUI's ``BaseModel``; ``apply_model`` gives x0."""
        return self.patcher.model

    @property
    def predictor(self) -> Predictor:
        predictor: Predictor = getattr(self.denoiser, "predictor", None) or self.denoiser.model_sampling
        return predictor

    def check_supported(self, p: Processing | None = None) -> None:
        forge_objects = getattr(self.model, "forge_objects", None)
        if forge_objects is None or getattr(forge_objects, "unet", None) is None:
            raise UnsupportedModel("no UNet is loaded")
        unet = self.denoiser.diffusion_model
        if getattr(self.model, "is_sd3", False) or not find_self_attention(unet):
            raise UnsupportedModel("this model has no UNet self-attention to align (SD3, Flux and similar)")
        if getattr(unet, "in_channels", 4) != 4:
            raise UnsupportedModel("inpainting (9-channel) and InstructPix2Pix models are not supported; "
                                   "use a normal checkpoint")

    @cached_property
    def schedule(self) -> DiscreteSchedule:
        sigmas = self.predictor.sigmas.detach().to("cpu", torch.float64)
        return DiscreteSchedule(1.0 / (1.0 + sigmas**2))

    @property
    def parameterization(self) -> str:
        kind = getattr(self.predictor, "prediction_type", None) or getattr(
            getattr(self.denoiser, "model_type", None), "name", "eps")
        return "v" if str(kind).lower() in ("v", "v_prediction") else "eps"

    @property
    def is_sdxl(self) -> bool:
        return bool(getattr(self.model, "is_sdxl", False))

    @property
    def compute_dtype(self) -> torch.dtype:
        dtype = getattr(self.denoiser, "computation_dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else self.patcher.model_dtype()

    @property
    def device(self) -> torch.device:
        return torch.device(self.patcher.load_device)

    @property
    def identity(self) -> str:
        """Checkpoint, VAE, the LoRA set in effect and the UNet's precision (the chain cache's key)."""
        from modules import shared

        info = getattr(self.model, "sd_checkpoint_info", None)
        lora_base = getattr(getattr(self.model, "forge_objects_after_applying_lora", None), "unet", None)
        loras = sorted(str(key) for key in getattr(lora_base, "lora_patches", None) or {})
        return "|".join([
            getattr(info, "shorthash", None) or getattr(info, "name", None) or str(id(self.model)),
            str(getattr(shared.opts, "sd_vae", "")),
            str(getattr(self.model, "current_lora_hash", "")),
            ",".join(loras),
            str(self.compute_dtype),
        ])

    @property
    def fp32_unavailable(self) -> str | None:
        if self.compute_dtype == torch.float32:
            return None
        return f"Forge computes the UNet in {str(self.compute_dtype).removeprefix('torch.')}"

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def pass_levels(self, p: Processing, txt2img: bool, hires: bool) -> PassLevels:
        return pass_levels(p, self.schedule, txt2img, hires)

    def callbacks_vp(self, levels: PassLevels) -> bool:
        """Forge's CFG denoiser converts DDIM's VP latents to VE and sigma, and gives x0 to every callback."""
        return False

    def override_schedule(self, p: Processing, sigmas: Tensor) -> Callable[[], None]:
        return override_schedule(p, sigmas)

    def set_start_noise(self, p: Processing, x: Tensor, noise: Tensor, start_noise: Tensor, txt2img: bool) -> None:
        """``p.modified_noise``: the sampler takes it instead of its own noise (scaled as that would be)."""
        p.modified_noise = start_noise.to(x.device, x.dtype)

    @torch.no_grad()
    def encode_reference(self, pixels: Tensor) -> Tensor:
        """``encode_first_stage`` (Forge's VAE path: its memory management, tiling, latent format) with the
        posterior's mean, as the official code encodes (Forge2's VAE samples unless told otherwise)."""
        with posterior_mode(self.model.forge_objects.vae):
            latent = self.model.encode_first_stage(pixels.float())
        latent = latent.float().clone().to(self.device)
        if not torch.isfinite(latent).all():
            raise ValueError("the VAE produced NaN/inf for the reference; try an fp16-fix VAE or --vae-in-fp32")
        return latent

    def encode_text(self, text: str, negative: bool, width: int, height: int) -> Conditioning:
        return encode_text(self.model, text, negative, width, height)

    def eps_model(self) -> EpsModel:
        return ForgeEps(self.denoiser, self.schedule, self.device)

    @contextmanager
    def full_precision(self) -> Iterator[EpsModel]:
        """The model itself: offered only where it computes in fp32 already (``fp32_unavailable`` None)."""
        yield self.eps_model()

    def plain_model(self) -> AbstractContextManager[None]:
        """The UNet on its device through Forge's memory management; calls with no patches at all."""
        return backend(self.denoiser).loaded(self.patcher)

    def free_memory(self) -> None:
        backend(self.denoiser).free()

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Image.Image:
        x = self.model.decode_first_stage(latent.float())
        array = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.ascontiguousarray(array))

    @property
    def layer_keys(self) -> list[tuple[str, int, int]]:
        return [block_key(layer.name) for layer in find_self_attention(self.denoiser.diffusion_model)]

    def align(self, p: Processing, spec: AlignmentSpec) -> ForgeAlignment:
        """RIVAL's patches on a clone of the pass's UNet patcher, which becomes the one the sampler uses; closing
        the alignment puts the patcher it cloned back (while the clone is still the one in place)."""
        forge_objects = self.model.forge_objects
        before = forge_objects.unet
        clone = forge_objects.unet = before.clone()

        def restore() -> None:
            if forge_objects.unet is clone:
                forge_objects.unet = before

        return ForgeAlignment(lambda: self.model.forge_objects.unet, spec, restore).install()


class ForgeEps:
    """eps(z, t, cond) through the denoiser's ``apply_model`` (x0 in VE form), with no patches: the inversion."""

    def __init__(self, denoiser: Denoiser, schedule: DiscreteSchedule, device: torch.device) -> None:
        self.denoiser = denoiser
        self.schedule = schedule
        self.device = device

    def __call__(self, z: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        sigma = self.schedule.t_to_sigma(t.detach().to("cpu", torch.float64)).reshape(-1)
        x = vp_to_ve(z.to(self.device, torch.float32), sigma.to(self.device))
        c: dict[str, Any] = {"c_crossattn": cond.context.to(self.device, torch.float32), "transformer_options": {}}
        if cond.y is not None:
            c["y"] = cond.y.to(self.device, torch.float32)
        denoised = self.denoiser.apply_model(x, sigma.to(self.device, torch.float32), **c).float()
        eps = (x - denoised) / sigma.to(self.device, torch.float32).reshape(-1, 1, 1, 1)
        return eps.to(z)


@contextmanager
def posterior_mode(vae: object) -> Iterator[None]:
    """Forge2's VAE returns the posterior's mode in the block (``model_vae_regulation``; ComfyUI's encodes
    the mode already)."""
    options = getattr(getattr(vae, "patcher", None), "model_options", None)
    if options is None:
        yield
        return
    had = "model_vae_regulation" in options
    before = options.get("model_vae_regulation")
    options["model_vae_regulation"] = _mode
    try:
        yield
    finally:
        if had:
            options["model_vae_regulation"] = before
        else:
            options.pop("model_vae_regulation", None)


def _mode(posterior: Posterior) -> Tensor:
    return posterior.mode()


class Backend:
    """Forge's memory management: Forge2's ``backend.memory_management`` or ComfyUI's ``model_management``."""

    def __init__(self, load: Callable[[UnetPatcher], None], free: Callable[[], None]) -> None:
        self.load = load
        self.free = free

    @contextmanager
    def loaded(self, patcher: UnetPatcher) -> Iterator[None]:
        self.load(patcher)
        yield


def backend(denoiser: Denoiser) -> Backend:
    """The memory management of the family the model belongs to (Forge2's models have a ``predictor``)."""
    if getattr(denoiser, "predictor", None) is not None:
        from backend import memory_management  # Forge, Forge Neo

        return Backend(memory_management.load_model_gpu, memory_management.soft_empty_cache)
    from ldm_patched.modules import model_management  # reForge, Forge Classic

    return Backend(lambda patcher: model_management.load_models_gpu([patcher]), model_management.soft_empty_cache)

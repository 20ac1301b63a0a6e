"""A tiny SD1-shaped model as Forge loads one (``backend/diffusion_engine/sd15.py`` ``StableDiffusion``).

The UNet is the A1111 stub's (``fake_model.make_unet``: the same real ldm modules and weights) with Forge's
forward (``backend.nn.unet.ForgeUNet``), inside ``KModel`` with the SD schedule's ``Prediction`` and a
``UnetPatcher``; the VAE is the A1111 stub's behind Forge's ``VAE`` (the posterior *sampled* unless the patcher's
``model_vae_regulation`` says otherwise); the text encoder is the A1111 stub's. Relied on, as in Forge: there is
no ``sd_model.model``/``apply_model``/``first_stage_model``; ``encode_first_stage`` returns the scaled latent
(``process_in``) and ``get_first_stage_encoding`` is the identity; ``alphas_cumprod`` exists only once a DDIM
sampler set it; ``forge_objects`` is reset from ``forge_objects_after_applying_lora`` before every sampling.
"""

from __future__ import annotations

import contextlib
import sys
from types import SimpleNamespace

import fake_model
import torch
from backend.modules.k_model import ComfyModel, KModel
from backend.modules.k_prediction import Prediction
from backend.nn.unet import ForgeUNet
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


class ForgeObjects:
    """Forge: backend/diffusion_engine/base.py ForgeObjects (shallow_copy: the same patchers in a new holder)."""

    def __init__(self, unet, clip, vae, clipvision):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class FirstStage(torch.nn.Module):
    """The A1111 stub's VAE as Forge's ``IntegratedAutoencoderKL``: ``encode(x, regulation)`` samples the
    posterior unless ``regulation`` is given; ``process_in``/``process_out`` scale."""

    def __init__(self, scale_factor: float, dtype: torch.dtype, family: bool = False):
        super().__init__()
        self.inner = fake_model.FakeVAE(scale_factor).to(dtype)
        self.scaling_factor = scale_factor
        self.family = family

    def encode(self, x, regulation=None):
        posterior: DiagonalGaussianDistribution = self.inner.encode(x)
        if self.family:  # ldm_patched AutoencoderKL: DiagonalGaussianRegularizer(sample=False), the mode
            return posterior.mode()
        return regulation(posterior) if regulation is not None else posterior.sample()

    def decode(self, z):
        return self.inner.decode(z)

    def process_in(self, latent):
        return latent * self.scaling_factor

    def process_out(self, latent):
        return latent / self.scaling_factor


class FakeForgeModel(torch.nn.Module):
    is_sd1, is_sd2, is_sdxl, is_sd3 = True, False, False, False
    latent_channels = 4

    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float32, family: bool = False):
        super().__init__()
        unet = ForgeUNet.from_ldm(fake_model.make_unet(seed, dtype=dtype))
        model = ComfyModel(unet, Prediction(), dtype) if family else KModel(unet, Prediction(), dtype)
        unet_patcher = UnetPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
        vae = VAE(FirstStage(0.18215, dtype, family))
        self.forge_objects = ForgeObjects(unet_patcher, None, vae, None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self._dtype = dtype
        self.sd_model_hash = f"{seed:010d}"
        self.sd_checkpoint_info = SimpleNamespace(
            name=f"fake-forge-sd1-{seed}.safetensors", name_for_extra=f"fake-forge-sd1-{seed}",
            model_name=f"fake-forge-sd1-{seed}", filename=f"/models/fake-forge-sd1-{seed}.safetensors",
            shorthash=self.sd_model_hash, sha256=None,
            title=f"fake-forge-sd1-{seed}.safetensors [{self.sd_model_hash}]", short_title=f"fake-forge-sd1-{seed}")
        self.extra_generation_params = {}
        self.comments = []

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    # Forge: StableDiffusion.get_learned_conditioning (the A1111 stub's text encoder)
    def get_learned_conditioning(self, prompt) -> torch.Tensor:
        conds = [fake_model.encode_text(text) for text in prompt]
        n = max(x.shape[0] for x in conds)
        empty = fake_model.encode_text("")
        return torch.stack([torch.cat([x, *[empty] * ((n - x.shape[0]) // fake_model.TOKENS)]) for x in conds]).to(
            self._dtype)

    # Forge: StableDiffusion.encode_first_stage: VAE.encode of [0, 1] channels-last pixels, then process_in
    def encode_first_stage(self, x):
        sample = self.forge_objects.vae.encode(x.movedim(1, -1) * 0.5 + 0.5)
        return self.forge_objects.vae.first_stage_model.process_in(sample).to(x)

    def decode_first_stage(self, x):
        sample = self.forge_objects.vae.first_stage_model.process_out(x)
        return (self.forge_objects.vae.decode(sample).movedim(-1, 1) * 2.0 - 1.0).to(x)

    def get_first_stage_encoding(self, x):
        return x

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        yield None


def install(seed: int = 0, dtype: torch.dtype = torch.float32) -> FakeForgeModel:
    """Build the fake Forge model (the patcher family's with ``reforge_flavour`` imported) as ``shared.sd_model``."""
    from modules import shared

    shared.sd_model = FakeForgeModel(seed, dtype, family="reforge_flavour" in sys.modules)
    return shared.sd_model

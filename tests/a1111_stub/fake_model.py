"""A tiny SD1-shaped model that looks like A1111's loaded ``LatentDiffusion`` to an extension.

The UNet is a real ``ldm`` UNetModel (SpatialTransformer blocks, attn1/attn2) with every parameter
re-randomised (ldm zero-inits its output layers, which would hide any attention change). The text
encoder and VAE are deterministic stand-ins. Float32 on the CPU by default; ``install(dtype=torch.float64)``
builds the same weights in float64 (UNet, VAE and text rows; the text rows and ``alphas_cumprod`` keep their
float32 values, as A1111's are float32) for parity tests at round-off level.
"""

from __future__ import annotations

import contextlib
import hashlib
from types import SimpleNamespace

import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

CONTEXT_DIM = 32
TOKENS = 77


def make_unet(seed: int = 0, std: float = 0.05, dtype: torch.dtype = torch.float32) -> UNetModel:
    unet = UNetModel(image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                     attention_resolutions=[1, 2], channel_mult=[1, 2], num_heads=2,
                     use_spatial_transformer=True, transformer_depth=1, context_dim=CONTEXT_DIM, legacy=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    unet = unet.eval()
    if dtype != torch.float32:
        to_dtype(unet, dtype)
    return unet


def to_dtype(unet: UNetModel, dtype: torch.dtype) -> None:
    """The UNet computing in ``dtype`` throughout: ldm hard-codes float32 in a few places (the sinusoidal time
    embedding, GroupNorm32, attention scores under ``_ATTN_PRECISION = "fp32"``); those are turned to ``dtype``."""
    import ldm.modules.attention

    ldm.modules.attention._ATTN_PRECISION = "model"
    unet.to(dtype)
    unet.dtype = dtype  # ldm casts the UNet's input to this attribute
    unet.time_embed.register_forward_pre_hook(lambda m, args: (args[0].to(m[0].weight.dtype),))
    for module in unet.modules():
        if type(module).__name__ == "GroupNorm32":
            module.forward = torch.nn.GroupNorm.forward.__get__(module)


class DiffusionWrapper(torch.nn.Module):
    """ldm's wrapper for conditioning_key 'crossattn': ``diffusion_model(x, t, context=cat(c_crossattn, 1))``."""

    conditioning_key = "crossattn"

    def __init__(self, diffusion_model: torch.nn.Module):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x, t, c_concat: list | None = None, c_crossattn: list | None = None, c_adm=None):
        # inputs in the UNet's dtype (A1111's autocast does this for fp16 UNets; ldm casts its output back to
        # the dtype of x, so a float64 UNet fed float32 latents would fail in its output layer)
        dtype = self.diffusion_model.dtype
        return self.diffusion_model(x.to(dtype), t, context=torch.cat(c_crossattn, 1).to(dtype))


class FakeVAE(torch.nn.Module):
    """8x average pooling + a fixed 1x1 conv to 4 channels; decoding inverts the conv and upsamples (nearest).
    ``encode`` returns ldm's DiagonalGaussianDistribution with a small fixed variance."""

    def __init__(self, scale_factor: float, seed: int = 1234):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(4, 3, generator=g) / 3 ** 0.5  # scaled latent = weight @ pooled RGB in [-1, 1]
        self.enc = torch.nn.Conv2d(3, 4, 1, bias=False)
        self.enc.weight.data.copy_(weight[:, :, None, None] / scale_factor)
        self.register_buffer("dec", torch.linalg.pinv(weight / scale_factor))
        self.logvar = -7.0

    @property
    def dtype(self) -> torch.dtype:
        return self.enc.weight.dtype

    # ldm/models/autoencoder.py AutoencoderKL.encode returns a DiagonalGaussianDistribution; ldm's
    # LatentDiffusion.encode_first_stage passes it on and get_first_stage_encoding samples it (x scale_factor)
    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        mean = self.enc(torch.nn.functional.avg_pool2d(x.to(self.dtype), 8))
        return DiagonalGaussianDistribution(torch.cat([mean, torch.full_like(mean, self.logvar)], 1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        rgb = torch.einsum("cd,bdhw->bchw", self.dec.to(z.dtype), z)
        return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")


def _prompt_tokens(prompt: str) -> int:
    return len(prompt.split())


def encode_text(prompt: str) -> torch.Tensor:
    """Deterministic fake CLIP: (77 * chunks, 32), one chunk per 75 words; the same text always gives the
    same tensor and "" gives one fixed (77, 32) embedding."""
    chunks = max(1, -(-_prompt_tokens(prompt) // 75))
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    return torch.randn(TOKENS * chunks, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))


class FakeLatentDiffusion(torch.nn.Module):
    parameterization = "eps"
    cond_stage_key = "txt"
    is_sd1, is_sd2, is_sdxl, is_sd3, is_ssd, is_sdxl_inpaint = True, False, False, False, False, False
    latent_channels = 4
    scale_factor = 0.18215

    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self._dtype = dtype
        self.model = DiffusionWrapper(make_unet(seed, dtype=dtype))
        self.first_stage_model = FakeVAE(self.scale_factor).to(dtype)
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        # float32 values as in A1111; held in float64 by a float64 model, so that k-diffusion's sigma table and
        # sigma -> t map are exact there too
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, 0).float().to(dtype))
        self.alphas_cumprod_original = self.alphas_cumprod
        self.sd_model_hash = f"{seed:010d}"
        self.sd_checkpoint_info = SimpleNamespace(
            name=f"fake-sd1-{seed}.safetensors", name_for_extra=f"fake-sd1-{seed}", model_name=f"fake-sd1-{seed}",
            filename=f"/models/fake-sd1-{seed}.safetensors", shorthash=self.sd_model_hash, sha256=None,
            title=f"fake-sd1-{seed}.safetensors [{self.sd_model_hash}]", short_title=f"fake-sd1-{seed}")
        self.cond_stage_model_empty_prompt = encode_text("")[None].to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        if not isinstance(cond, dict):
            cond = {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)

    # A1111 SD1/SD2: ldm LatentDiffusion.get_learned_conditioning -> a (B, 77*chunks, C) tensor (no SDXL dict here;
    # A1111's sd_models_xl.get_learned_conditioning returns {'crossattn', 'vector'} and zeroes an all-empty negative)
    def get_learned_conditioning(self, c) -> torch.Tensor:
        """(len(c), 77 * chunks, 32); shorter prompts in one call are padded with empty-prompt chunks."""
        conds = [encode_text(text) for text in c]
        n = max(x.shape[0] for x in conds)
        empty = self.cond_stage_model_empty_prompt[0]
        return torch.stack([torch.cat([x.to(self.dtype), *[empty] * ((n - x.shape[0]) // TOKENS)]) for x in conds])

    # ldm/models/diffusion/ddpm.py LatentDiffusion.encode_first_stage / get_first_stage_encoding
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior) -> torch.Tensor:
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample()
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise NotImplementedError(f"encoder_posterior of type '{type(encoder_posterior)}' not yet implemented")
        return self.scale_factor * z

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        yield None


class DiagonalGaussianRegularizer(torch.nn.Module):
    """sgm's ``DiagonalGaussianRegularizer`` (``sgm/modules/autoencoding/regularizers``): a posterior *sample*
    unless ``sample`` is False, then its mode (= mean)."""

    def __init__(self, sample: bool = True):
        super().__init__()
        self.sample = sample

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        posterior = DiagonalGaussianDistribution(z)
        return (posterior.sample() if self.sample else posterior.mode()), {}


class FakeSgmVAE(FakeVAE):
    """sgm's ``AutoencodingEngine``: ``encode`` returns a plain latent tensor (its regularizer samples)."""

    def __init__(self, scale_factor: float):
        super().__init__(scale_factor)
        self.regularization = DiagonalGaussianRegularizer()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.regularization(super().encode(x).parameters)[0]


class FakeSgmFirstStage(FakeLatentDiffusion):
    """The VAE side of A1111's SDXL model (sgm ``DiffusionEngine``): ``encode_first_stage`` returns the scaled
    *sampled* latent as a plain tensor (sgm ``DiffusionEngine.encode_first_stage``), and
    ``get_first_stage_encoding`` is the identity (A1111 ``sd_models_xl.get_first_stage_encoding``)."""

    is_sd1, is_sdxl = False, True
    scale_factor = 0.13025

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.first_stage_model = FakeSgmVAE(self.scale_factor)

    # sgm/models/diffusion.py DiffusionEngine.encode_first_stage: scale_factor * first_stage_model.encode(x), a
    # sampled tensor; A1111 modules/sd_models_xl.py get_first_stage_encoding is the identity
    def encode_first_stage(self, x):
        return self.scale_factor * self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, x):
        return x


def install(seed: int = 0, dtype: torch.dtype = torch.float32) -> FakeLatentDiffusion:
    """Build the fake model and make it ``shared.sd_model`` (what ``p.sd_model`` always returns)."""
    from modules import shared

    shared.sd_model = FakeLatentDiffusion(seed, dtype)
    return shared.sd_model


def reset_a1111_state() -> None:
    """Default opts, a fresh ``shared.state``, no registered callbacks, no recorded errors."""
    from modules import errors, script_callbacks, shared

    shared.reset()
    script_callbacks.clear_callbacks()
    errors.exception_records.clear()

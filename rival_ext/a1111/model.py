"""What RIVAL needs from A1111's loaded model: UNet, schedule, VAE mean, text rows, eps, hooks.

Everything goes through the model object A1111 hands the sampler (``apply_model`` with its
casts and autocast, ``get_learned_conditioning`` with textual inversion and LoRA in effect), so
the reference is treated exactly like the generated image. ``A1111Host`` offers all of it as the
library's ``rival_ext.host.Host``, the only way the job reaches the model; RIVAL's mechanism here
is module hooks on the ldm/sgm UNet (``rival_ext.session.RivalSession``), removed after each pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cached_property

import torch
from modules import devices, shared
from PIL import Image
from torch import Tensor, nn

from ..attention import block_key, find_self_attention
from ..conditioning import Conditioning
from ..eps_models import UNetEps
from ..host import AlignmentSpec, PassLevels, UnsupportedModel
from ..noise import DiscreteSchedule, abar_of_sigma, eps_from_v
from ..session import RivalSession
from ..webui.objects import Processing
from ..webui.sampling import override_schedule, pass_levels
from ..webui.text import encode_text
from .controlnet import BLOCK_FORWARD, active_reference, own_forwards
from .objects import LatentDiffusion


def unet_of(sd_model: LatentDiffusion) -> nn.Module:
    """The UNet module whose attention layers RIVAL hooks."""
    return sd_model.model.diffusion_model


def is_sdxl(sd_model: object) -> bool:
    """SDXL needs pooled vectors for the reference rows and zeroes empty negatives."""
    return bool(getattr(sd_model, "is_sdxl", False))


def check_supported(sd_model: LatentDiffusion | None, p: object = None) -> None:
    """Raise UnsupportedModel for model families and setups where RIVAL would be wrong (for this request ``p``)."""
    if sd_model is None:
        raise UnsupportedModel("no model is loaded")
    if getattr(sd_model, "is_sd3", False):
        raise UnsupportedModel("SD3 models have no UNet self-attention to align")
    unet = unet_of(sd_model)
    key = getattr(getattr(sd_model, "model", None), "conditioning_key", "crossattn")
    if key == "hybrid" or getattr(unet, "in_channels", 4) != 4:
        raise UnsupportedModel("inpainting (9-channel) and InstructPix2Pix models are not supported; "
                               "use a normal checkpoint")
    if key == "crossattn-adm" and not is_sdxl(sd_model):
        raise UnsupportedModel("unCLIP models are not supported")
    try:
        from modules import sd_unet

        if getattr(sd_unet, "current_unet", None) is not None:
            raise UnsupportedModel("a replacement UNet (TensorRT or similar) is active; RIVAL needs the "
                                   "PyTorch UNet")
    except ImportError:
        pass
    reference = active_reference(p)
    if reference is not None:
        raise UnsupportedModel(f"{reference} rewrites the same self-attention; turn it off to use RIVAL")
    for name, block in unet.named_modules():
        rewritten = "_forward" in vars(block) and not hasattr(block, BLOCK_FORWARD[1])  # ControlNet's: own_forwards
        if hasattr(block, "attn1") and rewritten:
            raise UnsupportedModel(f"another extension rewrote {name}; turn its attention features off to use RIVAL")
        attn1 = getattr(block, "attn1", None)
        if attn1 is not None and "forward" in vars(attn1):
            raise UnsupportedModel(f"{name}.attn1 is wrapped by another feature (Hypertile?); turn it off "
                                   "(Settings > Hypertile) to use RIVAL")


def schedule_of(sd_model: LatentDiffusion) -> DiscreteSchedule:
    """The model's own (possibly overridden) noise schedule, in float64."""
    return DiscreteSchedule(sd_model.alphas_cumprod.detach().to("cpu", torch.float64))


def parameterization_of(sd_model: object) -> str:
    """'v' for v-prediction checkpoints (SD2 768-v), else 'eps'."""
    return "v" if getattr(sd_model, "parameterization", "eps") == "v" else "eps"


@torch.no_grad()
def encode_reference(sd_model: LatentDiffusion, pixels: Tensor) -> Tensor:
    """``scale_factor`` x the VAE posterior mean of the reference, as the official code (never a sample).

    ldm (SD1, SD2) returns the posterior: its ``mean`` is taken. sgm (SDXL) samples inside
    ``encode_first_stage`` and returns a plain, already scaled tensor (which also has a ``.mode()``
    method, the statistical one): its regularizer is switched to the mode for the call.
    """
    x = pixels.to(devices.device, devices.dtype_vae)
    with posterior_mode(sd_model):
        encoded = sd_model.encode_first_stage(x)
    if isinstance(encoded, Tensor):
        latent = sd_model.get_first_stage_encoding(encoded)
    else:
        latent = sd_model.get_first_stage_encoding(encoded.mean)
    latent = latent.float()
    if not torch.isfinite(latent).all():
        raise ValueError("the VAE produced NaN/inf for the reference; try --no-half-vae or an fp16-fix VAE")
    return latent


@contextmanager
def posterior_mode(sd_model: object) -> Iterator[None]:
    """sgm's ``DiagonalGaussianRegularizer`` returns the posterior's mode instead of a sample in the block."""
    regularizer = getattr(getattr(sd_model, "first_stage_model", None), "regularization", None)
    sample = getattr(regularizer, "sample", None)
    if regularizer is None or not isinstance(sample, bool):
        yield
        return
    regularizer.sample = False
    try:
        yield
    finally:
        regularizer.sample = sample


class A1111Eps:
    """eps(z, t, cond) through ``sd_model.apply_model`` (v outputs converted), for the inversion."""

    def __init__(self, sd_model: LatentDiffusion, schedule: DiscreteSchedule) -> None:
        self.sd_model = sd_model
        self.schedule = schedule
        self.v = parameterization_of(sd_model) == "v"

    def __call__(self, z: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """eps for VP latents ``z`` at timesteps ``t`` under A1111's casts and autocast."""
        c: dict[str, Tensor | list[Tensor]]
        if cond.y is not None:
            c = {"crossattn": cond.context.to(z), "vector": cond.y.to(z)}
        else:
            c = {"c_crossattn": [cond.context.to(z)]}
        with devices.autocast():
            out = self.sd_model.apply_model(z, t.to(z.device, torch.float32), c).float()
        if not self.v:
            return out
        abar = abar_of_sigma(self.schedule.t_to_sigma(t)).to(z).reshape(-1, 1, 1, 1)
        return eps_from_v(out, z.float(), abar)


def model_identity(sd_model: object) -> str:
    """A string that changes when the weights in effect change (checkpoint, VAE, networks, precision)."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    parts = [
        getattr(info, "shorthash", None) or getattr(info, "name", None) or str(id(sd_model)),
        str(getattr(shared.opts, "sd_vae", "") if hasattr(shared, "opts") else ""),
        str(getattr(sd_model, "sd_model_hash", "")),
        str(devices.dtype_unet),
    ]
    try:
        import networks  # A1111's built-in Lora extension

        parts += [f"{n.name}:{n.te_multiplier}:{n.unet_multiplier}" for n in networks.loaded_networks]
    except (ImportError, AttributeError):
        pass
    return "|".join(parts)


@contextmanager
def class_forward(unet: nn.Module) -> Iterator[None]:
    """The UNet's own (class) forward for the block, without another extension's instance forward.

    sd-webui-controlnet replaces ``forward`` on the instance in its ``process()``; the official
    ControlNet pipeline inverts the reference with the plain UNet, so the inversion runs here.
    """
    replaced = vars(unet).pop("forward", None)
    try:
        yield
    finally:
        if replaced is not None:
            unet.forward = replaced


@contextmanager
def full_precision(sd_model: LatentDiffusion, schedule: DiscreteSchedule) -> Iterator[UNetEps]:
    """An fp32 eps model of the loaded UNet for the block (fp16 -> fp32 -> fp16 is exact).

    It calls the UNet directly with autocast off: A1111's ``apply_model`` would cast back to
    half precision. Used for the inversion (setting "fp32", and the redo of a half-precision
    inversion that overflowed, the cause of black images in similar tools). Every parameter and
    buffer gets its own dtype back (A1111's FP8 option keeps norms in fp16/fp32 beside float8
    weights), also when the block raises.
    """
    unet = unet_of(sd_model)
    tensors = [t for t in (*unet.parameters(), *unet.buffers()) if t.is_floating_point()]
    dtypes = [t.dtype for t in tensors]
    had_attr = "dtype" in vars(unet)
    old_attr = getattr(unet, "dtype", None)
    try:
        for tensor in tensors:
            tensor.data = tensor.data.float()
        if had_attr:
            _set_dtype(unet, torch.float32)
        device = next(unet.parameters()).device
        with no_autocast(device.type):
            yield UNetEps(unet, schedule, parameterization_of(sd_model))
    finally:
        for tensor, dtype in zip(tensors, dtypes):
            tensor.data = tensor.data.to(dtype)
        if had_attr:
            _set_dtype(unet, old_attr)


def _set_dtype(unet: nn.Module, dtype: object) -> None:
    """The UNet's own ``dtype`` instance attribute (ldm's; ``nn.Module``'s typing knows only tensors and modules
    as attributes): set in the instance's dict, as ``setattr`` does for a value that is neither."""
    vars(unet)["dtype"] = dtype


def no_autocast(device_type: str) -> AbstractContextManager[object]:
    """Autocast off where the device type has autocast; nothing elsewhere (MPS raises on torch < 2.5)."""
    if device_type in ("cuda", "cpu", "xpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


def low_vram(sd_model: object) -> bool:
    """--medvram/--lowvram move modules on demand through wrappers a direct UNet call bypasses."""
    return bool(getattr(shared.cmd_opts, "medvram", False) or getattr(shared.cmd_opts, "lowvram", False)
                or getattr(sd_model, "lowvram", False))


class A1111Host:
    """``rival_ext.host.Host`` on A1111's loaded model (one sampling pass)."""

    stacked_cfg_rows = True  # on_cfg_denoiser's x holds every row A1111 gives the model, uncond rows last

    def __init__(self, sd_model: LatentDiffusion | None) -> None:
        self.model = sd_model  # None: no model is loaded (check_supported says so)

    @property
    def loaded(self) -> LatentDiffusion:
        """The model, which ``check_supported`` found loaded before anything else reads it."""
        if self.model is None:
            raise UnsupportedModel("no model is loaded")
        return self.model

    def check_supported(self, p: Processing | None = None) -> None:
        check_supported(self.model, p)

    @property
    def unet(self) -> nn.Module:
        return unet_of(self.loaded)

    @cached_property
    def schedule(self) -> DiscreteSchedule:
        return schedule_of(self.loaded)

    @property
    def parameterization(self) -> str:
        return parameterization_of(self.model)

    @property
    def is_sdxl(self) -> bool:
        return is_sdxl(self.model)

    @property
    def identity(self) -> str:
        return model_identity(self.model)

    @property
    def fp32_unavailable(self) -> str | None:
        return "--medvram/--lowvram" if low_vram(self.model) else None

    @property
    def on_gpu(self) -> bool:
        return devices.device.type == "cuda"

    def pass_levels(self, p: Processing, txt2img: bool, hires: bool) -> PassLevels:
        return pass_levels(p, self.schedule, txt2img, hires)

    def callbacks_vp(self, levels: PassLevels) -> bool:
        """A1111's DDIM/PLMS/UniPC denoiser works on VP latents, timesteps and eps."""
        return levels.timesteps

    def override_schedule(self, p: Processing, sigmas: Tensor) -> Callable[[], None]:
        return override_schedule(p, sigmas)

    def set_start_noise(self, p: Processing, x: Tensor, noise: Tensor, start_noise: Tensor, txt2img: bool) -> None:
        """In place: A1111 samples from the very tensors it handed ``process_before_every_sampling``."""
        (x if txt2img else noise).copy_(start_noise)

    def encode_reference(self, pixels: Tensor) -> Tensor:
        return encode_reference(self.loaded, pixels)

    def encode_text(self, text: str, negative: bool, width: int, height: int) -> Conditioning:
        return encode_text(self.loaded, text, negative, width, height)

    def eps_model(self) -> A1111Eps:
        return A1111Eps(self.loaded, self.schedule)

    def full_precision(self) -> AbstractContextManager[UNetEps]:
        return full_precision(self.loaded, self.schedule)

    @contextmanager
    def plain_model(self) -> Iterator[None]:
        """The UNet's class forward and its blocks' own forwards (not ControlNet's idle leftovers)."""
        with class_forward(self.unet), own_forwards(self.unet):
            yield

    def free_memory(self) -> None:
        devices.torch_gc()

    def decode(self, latent: Tensor) -> Image.Image:
        return decode(self.loaded, latent)

    @property
    def layer_keys(self) -> list[tuple[str, int, int]]:
        return [block_key(layer.name) for layer in find_self_attention(self.unet)]

    def align(self, p: Processing, spec: AlignmentSpec) -> A1111Session:
        """Module hooks on the UNet: attn1 pre- and post-hooks and the UNet's row hooks, until ``close``."""
        return A1111Session(self.unet, spec.params, spec.references, self.parameterization, features=spec.features,
                            where=spec.where, selected=spec.selected).install()


class A1111Session(RivalSession):
    """``RivalSession`` with the UNet's blocks on their own forwards while it is installed (ControlNet's idle
    leftovers put aside, put back on removal)."""

    _own_forwards: AbstractContextManager[None] | None = None

    def install(self) -> A1111Session:
        self._own_forwards = own_forwards(self.unet)
        self._own_forwards.__enter__()
        try:
            super().install()
            return self
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        super().remove()
        if self._own_forwards is not None:
            self._own_forwards.__exit__(None, None, None)
            self._own_forwards = None

    close = remove


@torch.no_grad()
def decode(sd_model: LatentDiffusion, latent: Tensor) -> Image.Image:
    """A latent as a PIL image (for the reconstruction preview)."""
    x = sd_model.decode_first_stage(latent.to(devices.device, devices.dtype_vae))
    array = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)

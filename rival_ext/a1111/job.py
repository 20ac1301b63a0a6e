"""One generation with RIVAL in A1111: inversion, initial latent, hooks, AdaIN, cleanup.

A ``RivalJob`` lives on the processing object ``p``. ``p.sample`` is wrapped so that every hook
is removed in its ``finally`` (A1111 skips ``postprocess`` when sampling raises and swallows
exceptions in script callbacks). A pass (first pass, hires pass) is prepared in
``process_before_every_sampling``, when the sampler, the conditioning and the networks of that
pass exist; each model evaluation is announced by ``on_cfg_denoiser`` (sigma and the row layout)
and finished by ``on_cfg_after_cfg`` (AdaIN after CFG), both through the pass's ``RivalSession``.
The model is reached only through ``rival_ext.host.Host`` (``A1111Host``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from modules import devices, shared
from PIL import Image
from torch import Tensor

from ..chain import InversionChain, NonFiniteInversion, coarse_schedule, invert, reconstruct
from ..chain_cache import ChainCache
from ..conditioning import Role
from ..eps_models import KDenoiser
from ..feature_cache import FeatureCache
from ..hooks import swap_attribute
from ..host import Host, PassLevels, UnsupportedModel
from ..image import prepare_reference
from ..latent_init import force_keep, initial_latents, inpaint_initial_latent
from ..noise import DiscreteSchedule, abar_of_sigma, ve_noise_for, ve_std, ve_to_vp, vp_noise_for
from ..params import RivalParams
from ..reference_rows import Reference
from ..session import RivalSession
from .args import RivalArgs, RivalInputError
from .model import A1111Host

CHAINS = ChainCache()
FEATURES: dict[tuple, FeatureCache] = {}  # for the last chain only: features are large


def feature_cache(chain_key: tuple) -> FeatureCache | None:
    """The reference-feature cache for this chain when the setting is on (replaces any other)."""
    opts = shared.opts
    if not getattr(opts, "rival_feature_cache", False):
        FEATURES.clear()
        return None
    if chain_key not in FEATURES:
        FEATURES.clear()
        total = int(getattr(opts, "rival_feature_cache_mb", 4096)) * 2**20
        on_gpu = int(getattr(opts, "rival_feature_cache_gpu_mb", 1024)) * 2**20 if devices.device.type == "cuda" else 0
        FEATURES[chain_key] = FeatureCache(total, min(on_gpu, total))  # "of which on the GPU" is part of the total
    return FEATURES[chain_key]


class RivalAbort(BaseException):
    """Carries an error out of a script callback, which A1111 would swallow, to the p.sample wrapper."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class RivalRuntimeError(RuntimeError):
    """RIVAL could not run this generation (out of memory, NaN, interrupted inversion, ...)."""

    status_code = 500


class InversionInterrupted(Exception):
    """The user pressed Interrupt or Skip during the inversion."""


class RivalJob:
    """Everything RIVAL holds for one generation."""

    def __init__(self, p: object, args: RivalArgs) -> None:
        self.p = p
        self.args = args
        self.params: RivalParams = args.params
        self.notes: list[str] = []
        self.reconstructions: list[Image.Image] = []
        self.schedule: DiscreteSchedule | None = None
        self.levels: PassLevels | None = None
        self.chain: InversionChain | None = None
        self.keep_chain: InversionChain | None = None  # inpainting: the chain of the image being inpainted
        self.regenerate: Tensor | None = None
        self.host: Host | None = None
        self.chain_key: tuple = ()
        self.session: RivalSession | None = None
        self._uncond_x: Tensor | None = None
        self._restore_sample: Callable[[], None] | None = None
        self._restore_schedule: Callable[[], None] | None = None

    # -- lifetime ---------------------------------------------------------------------------------

    def wrap_sample(self) -> None:
        """Make ``p.sample`` remove every hook when it returns, raises or is interrupted.

        ``p.sample`` runs once per batch (batch count), so after a batch the wrapper stays until
        ``close`` (postprocess), which puts back exactly what was there (another extension's wrapper
        included). An error ends the generation: then it is put back at once.
        """
        original = self.p.sample

        def sample(*args: object, **kwargs: object) -> object:
            finished = False
            try:
                result = original(*args, **kwargs)
                finished = True
                return result
            except RivalAbort as abort:
                raise abort.error from None
            finally:
                if finished:
                    self.uninstall()
                else:
                    self.close()

        self._restore_sample = swap_attribute(self.p, "sample", sample)

    def close(self) -> None:
        """Remove hooks and give ``p.sample`` back (idempotent)."""
        self.uninstall()
        if self._restore_sample is not None:
            self._restore_sample()
        self._restore_sample = None

    def uninstall(self) -> None:
        """Remove the hooks of the current pass (the chains stay for ``post_sample``)."""
        if self.session is not None:
            self.session.close()
        if self._restore_schedule is not None:
            self._restore_schedule()
        self.session = self._restore_schedule = None
        self._uncond_x = None

    @property
    def active(self) -> bool:
        """Whether the hooks of a pass are installed."""
        return self.session is not None

    def note(self, text: str) -> None:
        """Record a line for the infotext's ``RIVAL notes`` (once)."""
        if text not in self.notes:
            self.notes.append(text)

    # -- a sampling pass --------------------------------------------------------------------------

    def prepare_pass(self, p: object, x: Tensor, noise: Tensor) -> None:
        """Invert the reference on this pass's schedule, set the start latent, install the hooks."""
        self.uninstall()
        self.chain = self.keep_chain = self.regenerate = None
        hires = bool(getattr(p, "is_hr_pass", False))
        if hires and not self.args.apply_to_hires:
            self.note("off in the hires pass")
            return
        host = A1111Host(getattr(p, "sd_model", None) or shared.sd_model)
        try:
            host.check_supported()
            self._prepare(p, host, x, noise, hires)
        except UnsupportedModel as reason:
            self.uninstall()
            self.note(f"off: {reason}")
            print(f"RIVAL is off for this generation: {reason}")
        except InversionInterrupted:
            self.uninstall()
            self.note("interrupted during the inversion")
        except (RivalInputError, RivalRuntimeError) as error:
            self.uninstall()
            raise RivalAbort(error) from None
        except torch.cuda.OutOfMemoryError:
            self.uninstall()
            devices.torch_gc()
            raise RivalAbort(RivalRuntimeError(
                "RIVAL: out of GPU memory while inverting the reference; lower the size or batch, "
                "or start A1111 with --medvram")) from None
        except Exception as error:
            self.uninstall()
            raise RivalAbort(RivalRuntimeError(f"RIVAL failed while preparing the pass: {error}")) from error

    def _prepare(self, p: object, host: Host, x: Tensor, noise: Tensor, hires: bool) -> None:
        batch, _, h, w = x.shape
        width, height = w * 8, h * 8
        self.host = host
        self.schedule = host.schedule
        self.levels = host.pass_levels(p, txt2img=x is noise, hires=hires)
        if self.levels.sampler_sigmas is not None:
            sigmas = self.levels.sampler_sigmas.float()
            self._restore_schedule = swap_attribute(p, "sampler_noise_scheduler_override", lambda _steps: sigmas)
        try:
            pixels = prepare_reference(self.reference_image(p), width, height)
        except ValueError as error:
            raise RivalInputError(str(error)) from None
        text = self.params.reference_text(current_prompt(p))
        cond = host.encode_text(text, negative=False, width=width, height=height)
        uncond = cond if text == "" and not host.is_sdxl else host.encode_text(
            "", negative=True, width=width, height=height)
        self.chain = self.invert(host, pixels, cond, text)
        self.regenerate = self.inpaint_region(p, (h, w))
        if self.regenerate is not None:
            self.keep_chain = self.inpainted_chain(p, host, cond, text)
        self.set_initial_latent(p, x, noise, batch)
        reference = Reference(self.chain, cond, uncond)
        self.session = RivalSession(
            host.unet, self.params, reference, host.parameterization,
            features=feature_cache(self.chain_key),
        ).install()

    def reference_image(self, p: object) -> Image.Image:
        """The upload, or img2img's first init image when asked."""
        if self.args.use_init_image:
            images = getattr(p, "init_images", None)
            if not images:
                raise RivalInputError("'use the init image as reference' needs img2img with an image")
            return images[0]
        return self.args.reference_image

    def invert(self, host: Host, pixels: Tensor, cond: object, text: str) -> InversionChain:
        """The reference's chain for this pass (its VAE mean), with the reconstruction preview if asked."""
        chain = self.chain_of(host, pixels, lambda: host.encode_reference(pixels), cond, text, "reference")
        if self.args.show_reconstruction:
            denoiser = KDenoiser(host.eps_model(), self.schedule, cond)
            with torch.no_grad(), host.class_forward():
                self.reconstructions.append(host.decode(reconstruct(chain, denoiser)))
        return chain

    def inpainted_chain(self, p: object, host: Host, cond: object, text: str) -> InversionChain:
        """Inpainting: the chain the keep region follows, that of the image being inpainted.

        One inversion when the reference is the init image on the whole picture; otherwise the init
        latent A1111 encoded (for "Only masked", its crop at the generation size) is inverted too.
        """
        if self.args.use_init_image and not getattr(p, "inpaint_full_res", False):
            return self.chain
        latents = p.init_latent.float()
        if any(not torch.equal(latents[0], other) for other in latents[1:]):
            raise RivalInputError("inpainting with RIVAL takes one init image for the whole batch")
        z0 = latents[:1].cpu()
        return self.chain_of(host, z0, lambda: z0, cond, text, "init image")

    def chain_of(self, host: Host, source: Tensor, latent: Callable[[], Tensor], cond: object, text: str,
                 what: str) -> InversionChain:
        """The chain of ``source`` on this pass, from the cache when every input that shapes it is the same."""
        sigmas = self.levels.sigmas
        steps = int(getattr(shared.opts, "rival_inversion_steps", 0) or 0)
        if 0 < steps < len(sigmas) - 1:
            sigmas = coarse_schedule(sigmas, steps)
            self.note(f"inversion on {steps} steps")
        precision = getattr(shared.opts, "rival_inversion_precision", "fp32")
        key = (
            host.identity,
            hashlib.sha256(source.numpy().tobytes()).hexdigest(),
            tuple(source.shape),
            tuple(round(float(s), 7) for s in sigmas),
            text,
            str(devices.dtype_unet),
            precision,
            host.parameterization,
        )
        if what == "reference":
            self.chain_key = key
        chain = CHAINS.get(key)
        if chain is not None:
            self.note(f"{what} chain from cache" if what != "reference" else "chain from cache")
            return chain
        z0 = latent()
        denoiser = KDenoiser(host.eps_model(), self.schedule, cond)
        state = shared.state
        textinfo, state.textinfo = state.textinfo, f"RIVAL: inverting the {what}"
        total = len(sigmas) - 1

        def progress(done: int, _total: int) -> None:
            if state.interrupted or state.skipped:
                raise InversionInterrupted
            state.sampling_step, state.sampling_steps = done, total

        fp32 = precision == "fp32" and not host.low_vram
        if precision == "fp32" and not fp32:
            self.note("inversion in the model's precision (--medvram/--lowvram)")

        def in_fp32() -> InversionChain:
            with host.full_precision() as model:
                return invert(z0, KDenoiser(model, self.schedule, cond), sigmas, progress)

        with torch.no_grad(), host.class_forward(), restored(state, "textinfo", textinfo):
            chain = None
            if fp32:
                try:
                    chain = in_fp32()
                except torch.cuda.OutOfMemoryError:  # the fp32 copy of the UNet does not fit: use the model's
                    devices.torch_gc()
                    self.note("inversion in the model's precision (no memory for an fp32 UNet)")
            if chain is None:
                try:
                    chain = invert(z0, denoiser, sigmas, callback=progress)
                except NonFiniteInversion:
                    if host.low_vram:
                        raise
                    self.note("inversion redone in fp32 (half precision gave NaN/inf)")
                    chain = in_fp32()
        CHAINS.put(key, chain)
        return chain

    def inpaint_region(self, p: object, size: tuple[int, int]) -> Tensor | None:
        """Regenerate mask on the latent grid in img2img's inpaint tab (A1111: white = regenerate)."""
        nmask = getattr(p, "nmask", None)
        if getattr(p, "image_mask", None) is None or nmask is None:
            if self.args.preset == "inpainting":
                raise RivalInputError("the Inpainting preset needs img2img's inpaint tab with a mask")
            return None
        regenerate = (nmask[0] if nmask.dim() == 3 else nmask.reshape(-1, *nmask.shape[-2:])[0]) >= 0.5
        if tuple(regenerate.shape) != size:
            raise RivalInputError(f"the mask's latent size {tuple(regenerate.shape)} differs from {size}")
        if not regenerate.any():
            raise RivalInputError("the inpainting mask is empty: paint the region to regenerate")
        return regenerate.cpu()

    def set_initial_latent(self, p: object, x: Tensor, noise: Tensor, batch: int) -> None:
        """Overwrite A1111's start tensors in place so that the sampler starts on the chain."""
        chain, levels = self.chain, self.levels
        seeds = list(getattr(p, "seeds", None) or [0] * batch)[:batch]
        seeds += [seeds[-1] + i + 1 for i in range(batch - len(seeds))]
        if self.regenerate is not None:
            top = self.keep_chain.top
            start = torch.stack([inpaint_initial_latent(top, self.regenerate, s) for s in seeds])
        else:
            start = initial_latents(chain.top, seeds, self.params.init_latent)
        if start is None:  # seed noise: leave the sampler's own start
            return
        if getattr(shared.opts, "img2img_extra_noise", 0) and not levels.txt2img:
            self.note("img2img extra noise is added on top of the RIVAL start")
        sigma0 = float(levels.sigmas[0])
        start = start.to(x.device, torch.float32)
        if levels.timesteps:
            start_vp = ve_to_vp(start, sigma0)
            if levels.txt2img:
                x.copy_(start_vp)
            else:
                noise.copy_(vp_noise_for(start_vp, x.float(), float(abar_of_sigma(sigma0))))
        elif levels.txt2img:
            scale = ve_std(sigma0) if getattr(shared.opts, "sgm_noise_multiplier", False) else sigma0
            x.copy_(start / scale)
        else:
            noise.copy_(ve_noise_for(start, x.float(), sigma0))

    # -- each model evaluation --------------------------------------------------------------------

    def on_cfg_denoiser(self, params: object) -> None:
        """Announce the evaluation: its sigma and t, its row roles; force the keep region."""
        if not self.active:
            return
        if shared.sd_model is not self.host.model:
            self.uninstall()
            self.note("stopped at the refiner switch")
            return
        raw = float(params.sigma.reshape(-1)[0])
        if self.levels.timesteps:
            t, sigma = raw, float(self.schedule.t_to_sigma(raw))
        else:
            sigma, t = raw, float(self.schedule.sigma_to_t(raw))
        n_cond, n_uncond = params.text_cond.shape[0], params.text_uncond.shape[0]
        self.session.begin(sigma, t, [Role.COND] * n_cond + [Role.UNCOND] * n_uncond)
        if self.regenerate is not None:
            chain = self.keep_chain
            reference = chain.reference_vp(sigma) if self.levels.timesteps else chain.reference_at(sigma)
            params.x = force_keep(params.x, reference, self.regenerate)
            params.denoiser.mask = None  # A1111's own blend would pull the keep region off the chain
        self._uncond_x = params.x[-n_uncond:]

    def on_cfg_after_cfg(self, params: object) -> None:
        """AdaIN of the guided prediction to the reference-cond row's, while t > t_early."""
        if self.active and self.session.evaluation is not None:
            params.x = self.session.after_guidance(params.x, None if self.levels.timesteps else self._uncond_x)

    def post_sample(self, samples: Tensor) -> None:
        """Inpainting: the keep region ends exactly on the inpainted image's clean latent (official overwrite)."""
        if self.regenerate is not None and self.keep_chain is not None and isinstance(samples, Tensor):
            samples.copy_(force_keep(samples, self.keep_chain.origin_latent, self.regenerate))


def current_prompt(p: object) -> str:
    """The batch's first prompt, with extra-network tags already stripped by A1111."""
    prompts = getattr(p, "prompts", None) or getattr(p, "all_prompts", None)
    return prompts[0] if prompts else getattr(p, "prompt", "")


@contextmanager
def restored(obj: object, name: str, value: object) -> Iterator[None]:
    """Set ``obj.name`` back to ``value`` when the block ends (the progress text after the inversion)."""
    try:
        yield
    finally:
        setattr(obj, name, value)

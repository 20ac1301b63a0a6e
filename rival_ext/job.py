"""One RIVAL generation, whatever the WebUI: pass preparation, evaluations, the keep region, notes.

A pass (first pass, hires pass) is prepared when the WebUI is about to sample it, once the sampler,
the conditioning and the networks of that pass exist: the reference is inverted on the pass's exact
noise levels (``inversion``, cached), the start latent is handed to the sampler, and RIVAL's mechanism
is installed on the model through the ``Host``. Each model evaluation is opened with its noise level
and row layout (the keep region forced onto its chain) and closed after guidance (AdaIN). The job
knows no WebUI: ``rival_ext.webui`` drives it from the script callbacks, and the host adapters
(``rival_ext.a1111``, ``rival_ext.forge``) reach the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from PIL import Image
from torch import Tensor

from .chain import InversionChain, reconstruct
from .chain_cache import ChainCache
from .conditioning import Conditioning, Role
from .eps_models import KDenoiser
from .feature_cache import FeatureCache
from .host import (
    Alignment,
    AlignmentSpec,
    Host,
    InversionInterrupted,
    ModelHost,
    PassLevels,
    PassRequest,
    Progress,
    Settings,
    UnsupportedModel,
)
from .image import prepare_reference
from .inversion import ChainKey, cached_chain, chain_key, inversion_sigmas
from .latent_init import force_keep, initial_latents, inpaint_initial_latent
from .layers import selected_layers
from .masks import latent_mask
from .noise import abar_of_sigma, ve_noise_for, ve_std, ve_to_vp, vp_noise_for
from .reference_rows import Reference
from .request import ExtraReference, RivalInputError, RivalRequest, RivalRuntimeError

P = TypeVar("P")  # the WebUI's object for a pass (A1111's ``p``), handed to the host unread

CHAINS = ChainCache()
FEATURES: dict[ChainKey, FeatureCache] = {}  # for the last chain only: features are large


def feature_cache(chain_key: ChainKey, settings: Settings, on_gpu: bool) -> FeatureCache | None:
    """The reference-feature cache for this chain when the setting is on (replaces any other)."""
    if settings.feature_cache_bytes <= 0:
        FEATURES.clear()
        return None
    if chain_key not in FEATURES:
        FEATURES.clear()
        total = settings.feature_cache_bytes
        on_device = min(settings.feature_cache_device_bytes, total) if on_gpu else 0  # part of the total
        FEATURES[chain_key] = FeatureCache(total, on_device)
    return FEATURES[chain_key]


@dataclass
class PreparedPass:
    """What a prepared pass holds; the same pass prepared again (Forge's hires pass) reuses it."""

    x: Tensor  # the pass's start tensors: the same ones again mean the same pass
    noise: Tensor
    host: ModelHost
    levels: PassLevels
    chain: InversionChain  # the main reference's
    references: tuple[Reference, ...]
    where: Tensor | None  # where RIVAL acts (latent grid)
    selected: frozenset[int] | None  # the self-attention layers it acts on
    chain_key: ChainKey
    keep_chain: InversionChain | None  # inpainting: the chain of the image being inpainted
    regenerate: Tensor | None  # inpainting: the latent-grid region to regenerate
    start_noise: Tensor | None

    @property
    def keep(self) -> tuple[Tensor, InversionChain] | None:
        """Inpainting: the region to regenerate and the chain the rest follows; None: no inpainting."""
        if self.regenerate is None:
            return None
        if self.keep_chain is None:
            raise RuntimeError("RIVAL: an inpainting pass has no chain of the image being inpainted")
        return self.regenerate, self.keep_chain


class RivalJob:
    """Everything RIVAL holds for one generation."""

    def __init__(self, request: RivalRequest, settings: Settings, progress: Progress) -> None:
        self.request = request
        self.params = request.params
        self.settings = settings
        self.progress = progress
        self.notes: list[str] = []
        self.reconstructions: list[Image.Image] = []
        self.prepared: PreparedPass | None = None
        self.alignment: Alignment | None = None
        self._images_x: Tensor | None = None
        self._restore_schedule: Callable[[], None] | None = None

    # -- lifetime ---------------------------------------------------------------------------------

    def uninstall(self) -> None:
        """Take the current pass's mechanism off the model (the chains stay for ``finish_samples``)."""
        if self.alignment is not None:
            self.alignment.close()
        if self._restore_schedule is not None:
            self._restore_schedule()
        self.alignment = self._restore_schedule = None
        self._images_x = None

    @property
    def active(self) -> bool:
        """Whether a pass's mechanism is installed."""
        return self.alignment is not None

    @property
    def host(self) -> ModelHost | None:
        return None if self.prepared is None else self.prepared.host

    def installed_pass(self) -> tuple[PreparedPass, Alignment]:
        """The pass whose mechanism is installed (``active``), and that mechanism."""
        if self.prepared is None or self.alignment is None:
            raise RuntimeError("RIVAL: no pass is installed")
        return self.prepared, self.alignment

    def note(self, text: str) -> None:
        """Record a line for the infotext's ``RIVAL notes`` (once)."""
        if text not in self.notes:
            self.notes.append(text)

    def stop(self, reason: str) -> None:
        """RIVAL off for the rest of the pass (the model changed under it), with a note."""
        self.uninstall()
        self.note(reason)

    # -- a sampling pass --------------------------------------------------------------------------

    def prepare_pass(self, p: P, host: Host[P], request: PassRequest, x: Tensor, noise: Tensor) -> None:
        """Invert the reference on this pass's schedule, hand the start to the sampler, install RIVAL.

        Raises ``RivalInputError`` for bad input and ``RivalRuntimeError`` when RIVAL cannot run; an
        unsupported model or an interrupted inversion leaves the pass without RIVAL and says so.
        """
        self.uninstall()
        previous = self.prepared
        again = (previous is not None and previous.x is x and previous.noise is noise
                 and previous.host.model is host.model)
        if not again:
            self.prepared = None
        if request.hires and not self.request.apply_to_hires:
            self.note("off in the hires pass")
            return
        try:
            host.check_supported(p)
            prepared = self.prepared
            if prepared is None:  # not the same pass again
                prepared = self.prepared = self._prepare(p, host, request, x, noise)
            self._install(p, host, prepared, x, noise)
        except UnsupportedModel as reason:
            self.uninstall()
            self.note(f"off: {reason}")
            print(f"RIVAL is off for this generation: {reason}")
        except InversionInterrupted:
            self.uninstall()
            self.note("interrupted during the inversion")
        except (RivalInputError, RivalRuntimeError):
            self.uninstall()
            raise
        except torch.cuda.OutOfMemoryError:
            self.uninstall()
            host.free_memory()
            raise RivalRuntimeError(
                "RIVAL: out of GPU memory while inverting the reference; lower the size or batch, "
                "or start the WebUI with --medvram") from None
        except Exception as error:
            self.uninstall()
            raise RivalRuntimeError(f"RIVAL failed while preparing the pass: {error}") from error

    def _prepare(self, p: P, host: Host[P], request: PassRequest, x: Tensor, noise: Tensor) -> PreparedPass:
        width, height = request.width, request.height
        levels = host.pass_levels(p, txt2img=request.txt2img, hires=request.hires)
        try:
            pixels = prepare_reference(self.reference_image(request), width, height)
        except ValueError as error:
            raise RivalInputError(str(error)) from None
        try:
            selected = selected_layers(self.params.layers, host.layer_keys, host.is_sdxl)
        except ValueError as error:
            raise RivalInputError(str(error)) from None
        text = self.params.reference_text(request.prompt)
        cond = host.encode_text(text, negative=False, width=width, height=height)
        uncond = cond if text == "" and not host.is_sdxl else host.encode_text(
            "", negative=True, width=width, height=height)
        sigmas = inversion_sigmas(levels.sigmas, self.settings, self.note)
        reference_key = chain_key(host, pixels, sigmas, text, self.settings.inversion_precision)
        chain = self.chain_of(host, reference_key, lambda: host.encode_reference(pixels), cond, sigmas, "reference")
        if self.request.show_reconstruction:
            self.reconstructions.append(self.reconstruction(host, chain, cond))
        main = Reference(chain, cond, uncond, self.params.reference_weight,
                         latent_mask(self.request.reference_mask, width, height))
        extras = tuple(self.extra_reference(host, extra, i, cond, uncond, text, sigmas, width, height)
                       for i, extra in enumerate(self.request.more_references) if extra.weight != 0.0)
        regenerate = self.inpaint_region(request, (x.shape[-2], x.shape[-1]))
        keep_chain = None if regenerate is None else self.inpainted_chain(host, request, chain, cond, text, sigmas)
        start = self.start_latents(request, levels, chain, keep_chain, regenerate, len(request.seeds))
        start_noise = None if start is None else self.start_noise(start, levels, x)
        where = latent_mask(self.request.mask, width, height)
        return PreparedPass(x, noise, host, levels, chain, (main, *extras), where, selected, reference_key, keep_chain,
                            regenerate, start_noise)

    def extra_reference(self, host: ModelHost, extra: ExtraReference, index: int, cond: Conditioning,
                        uncond: Conditioning, text: str, sigmas: Tensor, width: int, height: int) -> Reference:
        """A further reference: its own chain (cached), read through the same text rows as the first one, so that
        a weight means the same for every reference (one row where the reference text is shared, else two)."""
        try:
            pixels = prepare_reference(extra.image, width, height)
        except ValueError as error:
            raise RivalInputError(f"more_references[{index}]: {error}") from None
        key = chain_key(host, pixels, sigmas, text, self.settings.inversion_precision)
        chain = self.chain_of(host, key, lambda: host.encode_reference(pixels), cond, sigmas, f"reference {index + 2}")
        return Reference(chain, cond, uncond, extra.weight, latent_mask(extra.mask, width, height))

    def _install(self, p: P, host: Host[P], prepared: PreparedPass, x: Tensor, noise: Tensor) -> None:
        if prepared.levels.sampler_sigmas is not None:
            self._restore_schedule = host.override_schedule(p, prepared.levels.sampler_sigmas)
        if prepared.start_noise is not None:
            if self.settings.img2img_extra_noise and not prepared.levels.txt2img:
                self.note("img2img extra noise is added on top of the RIVAL start")
            host.set_start_noise(p, x, noise, prepared.start_noise.to(x.device), prepared.levels.txt2img)
        single = len(prepared.references) == 1
        features = feature_cache(prepared.chain_key, self.settings, host.on_gpu) if single else None
        self.alignment = host.align(p, AlignmentSpec(self.params, prepared.references, features, prepared.where,
                                                     prepared.selected))

    def reference_image(self, request: PassRequest) -> Image.Image | None:
        """The upload, or img2img's init image as the WebUI encodes it when asked (None: no reference given)."""
        if self.request.use_init_image:
            if request.init_image is None:
                raise RivalInputError("'use the init image as reference' needs img2img with an image")
            return request.init_image
        return self.request.reference_image

    def chain_of(self, host: ModelHost, key: ChainKey, latent: Callable[[], Tensor], cond: Conditioning, sigmas: Tensor,
                 what: str) -> InversionChain:
        """The chain of a source on this pass, from the cache when every input that shapes it is the same."""
        return cached_chain(CHAINS, key, host, latent, cond, sigmas, self.settings, self.progress, what, self.note)

    def reconstruction(self, host: ModelHost, chain: InversionChain, cond: Conditioning) -> Image.Image:
        """The reference inverted and sampled back (the reconstruction preview)."""
        denoiser = KDenoiser(host.eps_model(), host.schedule, cond)
        with torch.no_grad(), host.plain_model():
            return host.decode(reconstruct(chain, denoiser))

    def inpaint_region(self, request: PassRequest, size: tuple[int, int]) -> Tensor | None:
        """The region to regenerate on the latent grid in img2img's inpaint tab (None: no inpainting)."""
        if not request.masked or request.regenerate is None:
            if self.request.preset == "inpainting":
                raise RivalInputError("the Inpainting preset needs img2img's inpaint tab with a mask")
            return None
        regenerate = request.regenerate
        if tuple(regenerate.shape) != size:
            raise RivalInputError(f"the mask's latent size {tuple(regenerate.shape)} differs from {size}")
        if not regenerate.any():
            raise RivalInputError("the inpainting mask is empty: paint the region to regenerate")
        return regenerate.cpu()

    def inpainted_chain(self, host: ModelHost, request: PassRequest, chain: InversionChain, cond: Conditioning,
                        text: str, sigmas: Tensor) -> InversionChain:
        """Inpainting: the chain the keep region follows, that of the image being inpainted.

        With the init image as reference the two are the same picture and one inversion serves both;
        otherwise the init latent the WebUI encoded (for "Only masked", its crop) is inverted too.
        """
        if self.request.use_init_image:
            return chain
        if request.init_latent is None:
            raise RivalRuntimeError("RIVAL: inpainting needs the init image's latent, and the WebUI gave none")
        latents = request.init_latent.float()
        if any(not torch.equal(latents[0], other) for other in latents[1:]):
            raise RivalInputError("inpainting with RIVAL takes one init image for the whole batch")
        z0 = latents[:1].cpu()
        key = chain_key(host, z0, sigmas, text, self.settings.inversion_precision)
        return self.chain_of(host, key, lambda: z0, cond, sigmas, "init image")

    def start_latents(self, request: PassRequest, levels: PassLevels, chain: InversionChain,
                      keep_chain: InversionChain | None, regenerate: Tensor | None, batch: int) -> Tensor | None:
        """The VE latents (B,C,H,W) at the pass's first sigma each image starts from (None: the sampler's own)."""
        seeds = list(request.seeds[:batch]) or [0]
        seeds += [seeds[-1] + i + 1 for i in range(batch - len(seeds))]
        if regenerate is not None:
            if keep_chain is None:
                raise RuntimeError("RIVAL: an inpainting pass has no chain of the image being inpainted")
            return torch.stack([inpaint_initial_latent(keep_chain.top, regenerate, s) for s in seeds])
        return initial_latents(chain.top, seeds, self.params.init_latent)

    def start_noise(self, start: Tensor, levels: PassLevels, x: Tensor) -> Tensor:
        """The noise the sampler turns into ``start``: unit noise for txt2img, the img2img noise otherwise."""
        sigma0 = float(levels.sigmas[0])
        start = start.to(x.device, torch.float32)
        if levels.timesteps:
            start_vp = ve_to_vp(start, sigma0)
            if levels.txt2img:
                return start_vp
            return vp_noise_for(start_vp, x.float(), float(abar_of_sigma(sigma0)))
        if levels.txt2img:
            return start / (ve_std(sigma0) if self.settings.sgm_noise_multiplier else sigma0)
        return ve_noise_for(start, x.float(), sigma0)

    # -- each model evaluation --------------------------------------------------------------------

    def open_evaluation(self, level: float, x: Tensor, roles: Sequence[Role], images: slice) -> Tensor:
        """Open the evaluation at ``level`` (a timestep where the host's callbacks carry VP latents, else a
        sigma); ``x`` is what the model is given, ``images`` its rows that are one per image. Returns ``x``
        with the keep region forced onto its chain (inpainting)."""
        prepared, alignment = self.installed_pass()
        schedule = prepared.host.schedule
        vp = prepared.host.callbacks_vp(prepared.levels)
        if vp:
            t, sigma = level, float(schedule.t_to_sigma(level))
        else:
            sigma, t = level, float(schedule.sigma_to_t(level))
        keep = prepared.keep
        if keep is not None:
            regenerate, chain = keep
            reference = chain.reference_vp(sigma) if vp else chain.reference_at(sigma)
            x = force_keep(x, reference, regenerate)
        alignment.begin(sigma, t, roles, x[images])
        self._images_x = None if vp else x[images]
        return x

    def after_guidance(self, guided: Tensor) -> Tensor:
        """AdaIN of the guided prediction (eps, or x0 with the evaluation's input) while t > t_early."""
        if self.alignment is None or self.alignment.evaluation is None:
            return guided
        x, self._images_x = self._images_x, None
        return self.alignment.after_guidance(guided, x)

    def finish_samples(self, samples: object) -> None:
        """Inpainting: the keep region ends exactly on the inpainted image's clean latent (official overwrite)."""
        keep = None if self.prepared is None else self.prepared.keep
        if keep is not None and isinstance(samples, Tensor):
            regenerate, chain = keep
            samples.copy_(force_keep(samples, chain.origin_latent, regenerate))

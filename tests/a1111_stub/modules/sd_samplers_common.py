"""Sampler base class, step bookkeeping and VAE helpers of A1111's sd_samplers_common."""

from __future__ import annotations

import inspect
from collections import namedtuple

import torch

from modules import devices, shared
from modules.shared import opts, state


# A1111: modules/sd_samplers_common.py SamplerData.total_steps
class SamplerData(namedtuple('SamplerData', ['name', 'constructor', 'aliases', 'options'])):
    def total_steps(self, steps: int) -> int:
        """Expected model evaluations: second-order samplers evaluate about twice per step."""
        return steps * 2 if self.options.get("second_order", False) else steps


# A1111: modules/sd_samplers_common.py InterruptedException (a BaseException)
class InterruptedException(BaseException):
    pass


# A1111: modules/sd_samplers_common.py setup_img2img_steps
def setup_img2img_steps(p, steps=None):
    """(steps, t_enc) for img2img and the hires pass; an explicit ``steps`` forces the 'fix steps' formula."""
    if opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


# A1111: modules/sd_samplers_common.py samples_to_images_tensor / decode_first_stage
def samples_to_images_tensor(sample, approximation=None, model=None):
    """latent -> image in [-1, 1] (only the full VAE exists here)."""
    model = shared.sd_model if model is None else model
    with torch.no_grad(), devices.without_autocast():
        return model.decode_first_stage(sample.to(devices.dtype_vae))


def decode_first_stage(model, x):
    return samples_to_images_tensor(x.to(devices.dtype_vae), approximation_indexes.get(opts.sd_vae_decode_method, 0),
                                    model)


# A1111: modules/sd_samplers_common.py images_tensor_to_samples: model.get_first_stage_encoding(
# model.encode_first_stage(2 * image - 1)), each image alone when there are several
def images_tensor_to_samples(image, approximation=None, model=None):
    """image in [0, 1] -> latent; with several images each is encoded alone, as in A1111."""
    model = shared.sd_model if model is None else model
    image = image.to(devices.device, dtype=devices.dtype_vae) * 2 - 1
    if len(image) > 1:
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(img[None]))[0] for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))


# A1111: modules/sd_samplers_common.py store_latent (state.current_latent)
def store_latent(decoded) -> None:
    state.current_latent = decoded


# A1111: modules/sd_samplers_common.py Sampler
class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params: list[str] = []
        self.stop_at = None
        self.eta = None
        self.config: SamplerData | None = None
        self.last_latent = None
        self.s_min_uncond = None
        self.eta_option_field = 'eta_ancestral'
        self.eta_infotext_field = 'Eta'
        self.eta_default = 1.0
        self.conditioning_key = getattr(shared.sd_model.model, 'conditioning_key', 'crossattn')
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options: dict = {}

    # A1111: Sampler.callback_state: stop_at -> InterruptedException; state.sampling_step = d['i']
    def callback_state(self, d):
        """Called by the sampling loop after each step's first model evaluation: sets state.sampling_step = i."""
        if self.stop_at is not None and d['i'] > self.stop_at:
            raise InterruptedException
        state.sampling_step = d['i']

    # A1111: Sampler.launch_sampling: state.sampling_steps = steps, sampling_step = 0; InterruptedException ->
    # return self.last_latent (so an interrupt is not an error)
    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    # A1111: Sampler.initialize
    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = getattr(p, 'mask', None)
        self.model_wrap_cfg.nmask = getattr(p, 'nmask', None)
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, 'image_cfg_scale', None)
        self.eta = p.eta if p.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, 's_min_uncond', 0.0)

        kwargs = {}
        params = inspect.signature(self.func).parameters
        if 'eta' in params:
            if self.eta != self.eta_default:
                p.extra_generation_params[self.eta_infotext_field] = self.eta
            kwargs['eta'] = self.eta
        if 'noise_sampler' in params:
            # A1111 replaces k-diffusion's torch.randn_like with p.rng.next() (TorchHijack); same draws here.
            kwargs['noise_sampler'] = lambda sigma, sigma_next: p.rng.next()
        return kwargs

    # A1111: the tail of KDiffusionSampler/CompVisSampler.sample(_img2img): sampler_extra_args, launch_sampling
    # with callback_state, add_infotext
    def run_sampling(self, p, x, conditioning, unconditional_conditioning, image_conditioning, steps, schedule,
                     extra: dict, last_latent=None):
        """``func(model_wrap_cfg, x, sigmas | timesteps, extra_args=..., callback=callback_state, ...)``; what an
        interrupt before the first step returns is ``last_latent`` (img2img: the clean init latent), else ``x``."""
        self.last_latent = x if last_latent is None else last_latent
        self.sampler_extra_args = {'cond': conditioning, 'image_cond': image_conditioning,
                                   'uncond': unconditional_conditioning, 'cond_scale': p.cfg_scale,
                                   's_min_uncond': self.s_min_uncond}
        samples = self.launch_sampling(steps, lambda: self.func(
            self.model_wrap_cfg, x, schedule, extra_args=self.sampler_extra_args, disable=False,
            callback=self.callback_state, **extra))
        self.add_infotext(p)
        return samples

    def add_infotext(self, p) -> None:
        if self.model_wrap_cfg.padded_cond_uncond:
            p.extra_generation_params["Pad conds"] = True


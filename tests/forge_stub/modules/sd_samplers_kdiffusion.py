"""Forge: modules/sd_samplers_kdiffusion.py: A1111's samplers and ``get_sigmas``, over Forge's schedule.

Relied on: the CFG denoiser's ``inner_model`` is ``k_diffusion.external.ForgeScheduleLinker`` over the patcher's
predictor (``sigmas`` its table, ``get_sigmas(n)`` uniform in t, ``sigma_to_t`` the predictor's nearest
timestep); ``sample`` loads the UNet (``sampling_prepare``) and scales the noise with
``predictor.noise_scaling(sigmas[0], x, 0, max_denoise=opts.sgm_noise_multiplier)``; ``sample_img2img`` noises
the init latent with ``noise_scaling(sigma_sched[0], noise, x)`` (= x + noise * sigma).
"""

from __future__ import annotations

import torch
from backend.modules.k_model import predictor_of
from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare

from modules import a1111_module, sd_samplers_cfg_denoiser, sd_samplers_common, shared
from modules.script_callbacks import ExtraNoiseParams, extra_noise_callback
from modules.shared import opts

_a1111 = a1111_module("sd_samplers_kdiffusion")


# Forge: k_diffusion/external.py ForgeScheduleLinker
class ForgeScheduleLinker(torch.nn.Module):
    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    @property
    def sigmas(self):
        return self.predictor.sigmas

    @property
    def log_sigmas(self):
        return self.predictor.sigmas.log()

    def get_sigmas(self, n=None):
        if n is None:
            return torch.cat([self.sigmas.flip(0), self.sigmas.new_zeros([1])])
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

    def sigma_to_t(self, sigma, quantize=None):
        return self.predictor.timestep(sigma)

    def t_to_sigma(self, t):
        return self.predictor.sigma(t)


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = ForgeScheduleLinker(predictor_of(shared.sd_model.forge_objects.unet.model))
            self.model_wrap.inner_model = shared.sd_model
        return self.model_wrap


class KDiffusionSampler(_a1111.KDiffusionSampler):
    def __init__(self, funcname, sd_model, options=None):
        sd_samplers_common.Sampler.__init__(self, funcname)
        self.options = options or {}
        self.func = funcname
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    # Forge: KDiffusionSampler.sample_img2img
    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(unet_patcher, x=x)
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        x = x.to(noise)
        xi = self.model_wrap.predictor.noise_scaling(sigma_sched[0], noise, x, max_denoise=False)
        if opts.img2img_extra_noise > 0:
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            params = ExtraNoiseParams(noise, x, xi)
            extra_noise_callback(params)
            xi += params.noise * opts.img2img_extra_noise
        extra = self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        samples = self.run_sampling(p, xi, conditioning, unconditional_conditioning, image_conditioning, t_enc + 1,
                                    sigma_sched, extra, last_latent=x)
        sampling_cleanup(unet_patcher)
        return samples

    # Forge: KDiffusionSampler.sample
    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(unet_patcher, x=x)
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        if opts.sgm_noise_multiplier:
            p.extra_generation_params["SGM noise multiplier"] = True
        x = self.model_wrap.predictor.noise_scaling(sigmas[0], x, torch.zeros_like(x),
                                                    max_denoise=opts.sgm_noise_multiplier)
        extra = self.initialize(p)
        samples = self.run_sampling(p, x, conditioning, unconditional_conditioning, image_conditioning, steps, sigmas,
                                    extra)
        sampling_cleanup(unet_patcher)
        return samples


samplers_k_diffusion = _a1111.samplers_k_diffusion
samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, func=func: KDiffusionSampler(func, model), aliases, options)
    for label, func, aliases, options in samplers_k_diffusion
]

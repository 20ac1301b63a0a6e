"""Forge: modules/sd_samplers_timesteps.py: A1111's DDIM over Forge's denoiser.

Relied on: ``CompVisTimestepsDenoiser`` sets ``sd_model.alphas_cumprod = 1 / (predictor.sigmas ** 2 + 1)`` (the
model has none before); the CFG denoiser runs with ``classic_ddim_eps_estimation`` (VE x and sigma inside, eps
out); ``sample``/``sample_img2img`` load the UNet first; the timesteps, the noising of img2img and the DDIM loop
are A1111's.
"""

from __future__ import annotations

import torch
from backend.modules.k_model import predictor_of
from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare

from modules import a1111_module, sd_samplers_common, shared
from modules.sd_samplers_cfg_denoiser import CFGDenoiser

_a1111 = a1111_module("sd_samplers_timesteps")


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner_model = model
        self.inner_model.alphas_cumprod = 1.0 / (predictor_of(model.forge_objects.unet.model).sigmas ** 2.0 + 1.0)


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.classic_ddim_eps_estimation = True

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


class CompVisSampler(_a1111.CompVisSampler):
    def __init__(self, funcname, sd_model):
        sd_samplers_common.Sampler.__init__(self, funcname)
        self.eta_option_field = 'eta_ddim'
        self.eta_infotext_field = 'Eta DDIM'
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def sample_img2img(self, p, x, noise, *args, **kwargs):
        sampling_prepare(shared.sd_model.forge_objects.unet, x=x)
        samples = super().sample_img2img(p, x, noise, *args, **kwargs)
        sampling_cleanup(shared.sd_model.forge_objects.unet)
        return samples

    def sample(self, p, x, *args, **kwargs):
        sampling_prepare(shared.sd_model.forge_objects.unet, x=x)
        samples = super().sample(p, x, *args, **kwargs)
        sampling_cleanup(shared.sd_model.forge_objects.unet)
        return samples


samplers_timesteps = _a1111.samplers_timesteps
samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, lambda model, func=func: CompVisSampler(func, model), aliases, options)
    for label, func, aliases, options in samplers_timesteps
]

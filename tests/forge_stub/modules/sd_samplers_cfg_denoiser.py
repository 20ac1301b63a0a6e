"""Forge: modules/sd_samplers_cfg_denoiser.py ``CFGDenoiser.forward``: one evaluation through Forge's
``sampling_function`` instead of A1111's row stacking.

Relied on: an interrupt raises first; DDIM's VP latent and timestep become VE and the table's sigma
(``classic_ddim_eps_estimation``); an inpainting mask blends x with the noised init latent *before* the callback
(``torch.randn_like``); ``on_cfg_denoiser`` gets ``CFGDenoiserParams(x, image_cond, sigma, ..., cond, uncond,
self)`` with x one row per image and the reconstructed cond/uncond, and its x is what the model gets; skip-early
CFG and NGMS set cond_scale to 1 after the callback; ``on_cfg_denoised`` is never called; after the model the
mask blends the denoised with the init latent; ``on_cfg_after_cfg`` gets the guided x0 and its x is used; DDIM
gets eps back. Refiner switching and the hires CFG scale are left out.
"""

from __future__ import annotations

import torch
from backend.modules.k_model import predictor_of
from backend.sampling.sampling_function import sampling_function

from modules import prompt_parser, sd_samplers_common
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoiser_callback,
)
from modules.shared import opts, state


class CFGDenoiser(torch.nn.Module):
    patcher_family = False  # reforge_flavour: reForge's forward (see there)

    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.p = None
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.mask_before_denoising = False
        self.classic_ddim_eps_estimation = False

    @property
    def inner_model(self):
        raise NotImplementedError()

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        original_x_device, original_x_dtype = x.device, x.dtype
        if self.classic_ddim_eps_estimation:
            acd = self.inner_model.inner_model.alphas_cumprod
            fake_sigmas = ((1 - acd) / acd) ** 0.5
            real_sigma = fake_sigmas[sigma.round().long().clip(0, int(fake_sigmas.shape[0]))]
            x = x * (((real_sigma ** 2.0 + 1.0) ** 0.5)[:, None, None, None])
            sigma = real_sigma
        cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None
        if self.mask is not None and (self.mask_before_denoising or not self.patcher_family):
            predictor = predictor_of(self.inner_model.inner_model.forge_objects.unet.model)
            noisy = predictor.noise_scaling(sigma[:, None, None, None], torch.randn_like(self.init_latent),
                                            self.init_latent, max_denoise=False)
            x = x * self.nmask + noisy * self.mask
        denoiser_params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond,
                                            uncond, self)
        cfg_denoiser_callback(denoiser_params)
        if self.patcher_family:
            denoiser_params.x = x  # reForge hands the model its own x: an assigned params.x is not read
        if opts.skip_early_cond > 0 and self.step / self.total_steps <= opts.skip_early_cond:
            cond_scale = 1.0
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            cond_scale = 1.0
            self.p.extra_generation_params["NGMS"] = s_min_uncond
        denoised, _cond_pred, _uncond_pred = sampling_function(self, denoiser_params=denoiser_params,
                                                             cond_scale=cond_scale,
                                                             cond_composition=cond_composition)
        if self.mask is not None and not (self.patcher_family and self.mask_before_denoising):
            denoised = denoised * self.nmask + self.init_latent * self.mask
        self.sampler.last_latent = denoised
        sd_samplers_common.store_latent(denoised)
        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        denoised = after.x
        self.step += 1
        if self.classic_ddim_eps_estimation:
            return (x - denoised) / sigma[:, None, None, None]
        return denoised.to(device=original_x_device, dtype=original_x_dtype)

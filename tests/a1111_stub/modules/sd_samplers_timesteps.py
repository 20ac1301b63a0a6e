"""Timestep family (DDIM only): VP space, the denoiser's "sigma" argument is the integer timestep, output is eps."""

from __future__ import annotations

import torch

from modules import devices, sd_samplers_common, shared
from modules.script_callbacks import ExtraNoiseParams, extra_noise_callback
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.shared import opts


# A1111: modules/sd_samplers_timesteps.py CompVisTimestepsDenoiser: the model's eps at integer timesteps
class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


# A1111: modules/sd_samplers_timesteps.py CompVisTimestepsVDenoiser: eps = sqrt(abar) v + sqrt(1 - abar) x
class CompVisTimestepsVDenoiser(CompVisTimestepsDenoiser):
    def forward(self, input, timesteps, **kwargs):
        v = self.inner_model.apply_model(input, timesteps, **kwargs)
        a = self.inner_model.alphas_cumprod[timesteps.to(torch.int)][:, None, None, None]
        return a.sqrt() * v + (1 - a).sqrt() * input


# A1111: modules/sd_samplers_timesteps_impl.py ddim (eta 0 only): len(timesteps) - 1 calls from timesteps[-1]
@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    """Deterministic DDIM from timesteps[-1] down: len(timesteps) - 1 model calls, last target level timesteps[0]."""
    if eta:
        raise NotImplementedError("stub: DDIM with eta != 0")
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    extra_args, s_in = extra_args or {}, x.new_ones((x.shape[0],))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1.0 - a_prev) ** 0.5 * e_t
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': 0, 'sigma_hat': 0, 'denoised': pred_x0})
    return x


samplers_timesteps = [('DDIM', ddim, ['ddim'], {})]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, lambda model, func=func: CompVisSampler(func, model), aliases, options)
    for label, func, aliases, options in samplers_timesteps
]


# A1111: modules/sd_samplers_timesteps.py CFGDenoiserTimesteps: mask_before_denoising; get_pred_x0 in VP
class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        a_t = self.alphas[sigma.to(dtype=int)][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            v = shared.sd_model.parameterization == "v"
            self.model_wrap = (CompVisTimestepsVDenoiser if v else CompVisTimestepsDenoiser)(shared.sd_model)
        return self.model_wrap


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.eta_option_field = 'eta_ddim'
        self.eta_infotext_field = 'Eta DDIM'
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    # A1111: modules/sd_samplers_timesteps.py CompVisSampler.get_timesteps
    def get_timesteps(self, p, steps):
        """Ascending ``clip(range(0, 1000, 1000 // steps) + 1, 0, 999)``, e.g. 20 steps -> 1, 51, ..., 951."""
        discard = self.config is not None and self.config.options.get('discard_next_to_last_sigma', False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps)), device=devices.device) + 1, 0, 999)

    # A1111: CompVisSampler.sample_img2img: noised to timesteps[t_enc] (xi = sqrt(abar) x + sqrt(1 - abar) noise),
    # sampled over timesteps[:t_enc] (first call at timesteps[t_enc - 1]); launch_sampling(t_enc + 1, ...)
    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        """Noised to level timesteps[t_enc], then DDIM over timesteps[:t_enc] (first call at timesteps[t_enc-1])."""
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        a = shared.sd_model.alphas_cumprod[timesteps[t_enc]]
        xi = x * a.sqrt() + noise * (1 - a).sqrt()
        if opts.img2img_extra_noise > 0:
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            params = ExtraNoiseParams(noise, x, xi)
            extra_noise_callback(params)
            xi += params.noise * opts.img2img_extra_noise * a.sqrt()
        extra = self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        return self.run_sampling(p, xi, conditioning, unconditional_conditioning, image_conditioning, t_enc + 1,
                                 timesteps[:t_enc], extra, last_latent=x)

    # A1111: CompVisSampler.sample: x unscaled (unit noise), all timesteps: steps - 1 model calls
    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        extra = self.initialize(p)
        return self.run_sampling(p, x, conditioning, unconditional_conditioning, image_conditioning, steps,
                                 timesteps, extra)

"""k-diffusion family: CompVis denoiser wrappers, a few sampling loops and ``KDiffusionSampler``.

The wrappers and loops are short re-statements of k-diffusion (the commit A1111 1.10.1 pins): VE space,
``x0 = x + c_out * eps(x * c_in, t(sigma))``; each loop calls ``callback`` right after its step's first model call.
"""

from __future__ import annotations

import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, sd_schedulers, shared
from modules.script_callbacks import ExtraNoiseParams, extra_noise_callback
from modules.shared import opts


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


# A1111 pins k-diffusion: k_diffusion/external.py CompVisDenoiser (DiscreteEpsDDPMDenoiser): sigmas =
# sqrt((1 - abar) / abar); get_sigmas(n) = t_to_sigma(linspace(999, 0, n)) + [0]; sigma_to_t log-interpolates
class CompVisDenoiser(torch.nn.Module):
    """eps model -> x0 denoiser over the model's 1000 discrete sigmas (continuous t by log-sigma interpolation)."""

    def __init__(self, model, quantize=False):
        super().__init__()
        self.inner_model = model
        self.sigma_data = 1.0
        self.quantize = quantize
        sigmas = ((1 - model.alphas_cumprod) / model.alphas_cumprod) ** 0.5
        self.register_buffer('sigmas', sigmas)
        self.register_buffer('log_sigmas', sigmas.log())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def get_sigmas(self, n=None):
        if n is None:
            return torch.cat([self.sigmas.flip(0), self.sigmas.new_zeros([1])])
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

    def sigma_to_t(self, sigma, quantize=None):
        quantize = self.quantize if quantize is None else quantize
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        if quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape)
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        w = ((self.log_sigmas[low] - log_sigma) / (self.log_sigmas[low] - self.log_sigmas[low + 1])).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).view(sigma.shape)

    def t_to_sigma(self, t):
        t = t.float()
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def get_scalings(self, sigma):
        return -sigma, 1 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5  # c_out, c_in

    def get_eps(self, *args, **kwargs):
        return self.inner_model.apply_model(*args, **kwargs)

    def forward(self, input, sigma, **kwargs):
        c_out, c_in = (_bc(s, input) for s in self.get_scalings(sigma))
        return input + self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs) * c_out


# k_diffusion/external.py CompVisVDenoiser (DiscreteVDDPMDenoiser): x0 = c_skip x + c_out v
class CompVisVDenoiser(CompVisDenoiser):
    """Same schedule for v-prediction models: ``x0 = c_skip * x + c_out * v``."""

    def get_scalings(self, sigma):
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = -sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2) ** 0.5
        return c_skip, c_out, 1 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def get_v(self, x, t, cond, **kwargs):
        return self.inner_model.apply_model(x, t, cond)

    def forward(self, input, sigma, **kwargs):
        c_skip, c_out, c_in = (_bc(s, input) for s in self.get_scalings(sigma))
        return self.get_v(input * c_in, self.sigma_to_t(sigma), **kwargs) * c_out + input * c_skip


# k_diffusion/sampling.py to_d
def to_d(x, sigma, denoised):
    return (x - denoised) / _bc(sigma, x)


# k_diffusion/sampling.py sample_euler (s_churn left out): one model call a step, callback after it
@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


# k_diffusion/sampling.py sample_euler_ancestral (noise via A1111's TorchHijack -> p.rng.next())
@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    noise_sampler = noise_sampler or (lambda sigma, sigma_next: torch.randn_like(x))
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        s, s_next = sigmas[i], sigmas[i + 1]
        sigma_up = min(s_next, eta * (s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5) if eta else 0.0
        sigma_down = (s_next ** 2 - sigma_up ** 2) ** 0.5
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': s, 'sigma_hat': s, 'denoised': denoised})
        x = x + to_d(x, s, denoised) * (sigma_down - s)
        if s_next > 0:
            x = x + noise_sampler(s, s_next) * s_noise * sigma_up
    return x


# k_diffusion/sampling.py sample_heun: two calls a step except the last
@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


# k_diffusion/sampling.py sample_dpm_2
@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = (sigmas[i].log() + sigmas[i + 1].log()).div(2).exp()  # geometric midpoint
            x_2 = x + d * (sigma_mid - sigmas[i])
            x = x + to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args)) * (sigmas[i + 1] - sigmas[i])
    return x


# k_diffusion/sampling.py sample_dpmpp_2m
@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is not None and sigmas[i + 1] != 0:
            r = (t + sigmas[i - 1].log()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        else:
            denoised_d = denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


# A1111: modules/sd_samplers_kdiffusion.py samplers_k_diffusion (the options used here)
samplers_k_diffusion = [
    ('DPM++ 2M', sample_dpmpp_2m, ['k_dpmpp_2m'], {'scheduler': 'karras'}),
    ('Euler a', sample_euler_ancestral, ['k_euler_a', 'k_euler_ancestral'], {"uses_ensd": True}),
    ('Euler', sample_euler, ['k_euler'], {}),
    ('Heun', sample_heun, ['k_heun'], {"second_order": True}),
    ('DPM2', sample_dpm_2, ['k_dpm_2'],
     {'scheduler': 'karras', 'discard_next_to_last_sigma': True, "second_order": True}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, func=func: KDiffusionSampler(func, model), aliases, options)
    for label, func, aliases, options in samplers_k_diffusion
]


# A1111: modules/sd_samplers_kdiffusion.py CFGDenoiserKDiffusion.inner_model: CompVis(V)Denoiser by parameterization
class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            denoiser = CompVisVDenoiser if shared.sd_model.parameterization == "v" else CompVisDenoiser
            self.model_wrap = denoiser(shared.sd_model, quantize=opts.enable_quantization)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.options = options or {}
        self.func = funcname
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    # A1111: modules/sd_samplers_kdiffusion.py KDiffusionSampler.get_sigmas: discard_next_to_last_sigma adds a step
    # and drops the penultimate sigma; p.sampler_noise_scheduler_override(steps) wins over any scheduler; 'Automatic'
    # = the sampler's default scheduler, none -> model_wrap.get_sigmas(steps); else sd_schedulers.<function>
    def get_sigmas(self, p, steps):
        """Schedule for ``steps``; 'Automatic' means the sampler's default, which for Euler/Euler a/Heun is
        none at all: then the wrapper's own ``get_sigmas(steps)`` (uniform in t) is used."""
        discard = self.config is not None and self.config.options.get('discard_next_to_last_sigma', False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0

        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or 'Automatic'
        if scheduler_name == 'Automatic':
            scheduler_name = self.config.options.get('scheduler', None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)

        m_sigma_min, m_sigma_max = self.model_wrap.sigmas[0].item(), self.model_wrap.sigmas[-1].item()
        if p.sampler_noise_scheduler_override:
            sigmas = p.sampler_noise_scheduler_override(steps)
        elif scheduler is None or scheduler.function is None:
            sigmas = self.model_wrap.get_sigmas(steps)
        else:
            kwargs = {'sigma_min': opts.sigma_min or m_sigma_min, 'sigma_max': opts.sigma_max or m_sigma_max}
            if scheduler.label != 'Automatic' and not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = scheduler.label
            elif scheduler.label != p.extra_generation_params.get("Schedule type"):
                p.extra_generation_params["Hires schedule type"] = scheduler.label
            if scheduler.default_rho != -1 and opts.rho != 0 and opts.rho != scheduler.default_rho:
                kwargs['rho'] = opts.rho
            if scheduler.need_inner_model:
                kwargs['inner_model'] = self.model_wrap
            sigmas = scheduler.function(n=steps, **kwargs, device='cpu')

        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas.cpu()

    # A1111: KDiffusionSampler.sample_img2img: (steps, t_enc) = setup_img2img_steps; sigma_sched =
    # sigmas[steps - t_enc - 1:]; xi = x + noise * sigma_sched[0]; extra noise; launch_sampling(t_enc + 1, ...)
    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        if opts.img2img_extra_noise > 0:
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            params = ExtraNoiseParams(noise, x, xi)
            extra_noise_callback(params)
            xi += params.noise * opts.img2img_extra_noise
        extra = self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        return self.run_sampling(p, xi, conditioning, unconditional_conditioning, image_conditioning, t_enc + 1,
                                 sigma_sched, extra, last_latent=x)

    # A1111: KDiffusionSampler.sample: x * sigmas[0], or x * sqrt(1 + sigmas[0]^2) with opts.sgm_noise_multiplier
    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        if opts.sgm_noise_multiplier:
            p.extra_generation_params["SGM noise multiplier"] = True
            x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        else:
            x = x * sigmas[0]
        extra = self.initialize(p)
        return self.run_sampling(p, x, conditioning, unconditional_conditioning, image_conditioning, steps, sigmas,
                                 extra)


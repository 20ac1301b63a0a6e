"""Forge: backend/modules/k_prediction.py ``Prediction`` (eps/v): float32 sigma table, *nearest* timestep of
a sigma (``timestep``), log-interpolated sigma of a timestep (``sigma``), the c_in/c_out scalings, noise_scaling."""

from __future__ import annotations

import torch


class Prediction(torch.nn.Module):
    def __init__(self, sigma_data=1.0, prediction_type='epsilon', linear_start=0.00085, linear_end=0.012,
                 timesteps=1000):
        super().__init__()
        self.sigma_data = sigma_data
        self.prediction_type = prediction_type
        # Forge: make_beta_schedule("linear"): betas = linspace(sqrt(start), sqrt(end), n) ** 2 (float64)
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer('alphas_cumprod', alphas_cumprod.float())
        self.register_buffer('sigmas', sigmas.float())
        self.register_buffer('log_sigmas', sigmas.log().float())

    # Forge: AbstractPrediction.calculate_input: x / sqrt(sigma^2 + sigma_data^2)
    def calculate_input(self, sigma, noise):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    # Forge: AbstractPrediction.calculate_denoised: eps: x - out * sigma; v: the v formula
    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        if self.prediction_type == 'v_prediction':
            return (model_input * self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
                    - model_output * sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2) ** 0.5)
        return model_input - model_output * sigma

    # Forge: AbstractPrediction.noise_scaling: noise * sqrt(1 + sigma^2) (max_denoise) or noise * sigma, + latent
    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def sigma_min(self):
        return self.sigmas[0]

    def sigma_max(self):
        return self.sigmas[-1]

    # Forge: Prediction.timestep: argmin |log sigma - log_sigmas| (the nearest integer timestep)
    def timestep(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    # Forge: Prediction.sigma: log-linear interpolation between the table's neighbours
    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

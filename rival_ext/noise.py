"""Noise levels: discrete DDPM timesteps, k-diffusion sigmas, and the VP/VE latent forms.

A1111's k-diffusion samplers work in the variance-exploding (VE) form x = x0 + sigma * eps; its
DDIM/PLMS/UniPC samplers and the official RIVAL code work in the variance-preserving (VP) form
z = sqrt(abar) x0 + sqrt(1 - abar) eps. The two meet through sigma = sqrt((1 - abar) / abar) and
z = x / sqrt(1 + sigma^2). RIVAL's thresholds are timesteps, so every evaluation's sigma is turned
into a (real-valued) timestep exactly as k-diffusion does: linear interpolation in log sigma.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def vp_scale(sigma: Tensor | float) -> Tensor:
    """c_in(sigma) = 1 / sqrt(1 + sigma^2): multiplies a VE latent into its VP form."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return (1.0 + sigma**2).rsqrt()


def abar_of_sigma(sigma: Tensor | float) -> Tensor:
    """abar = 1 / (1 + sigma^2) as vp_scale(sigma)^2 (float64): the VP signal level of sigma."""
    return vp_scale(sigma) ** 2


def _scale_for(sigma: Tensor | float, like: Tensor) -> Tensor | float:
    """vp_scale(sigma) ready to multiply ``like``.

    A scalar sigma gives a Python float (the product is rounded once, in the latent's compute
    precision); per-row sigmas (B,) give a (B,1,..) tensor in the latent's dtype.
    """
    scale = vp_scale(sigma)
    if scale.dim() == 0:
        return float(scale)
    return scale.to(like.dtype).reshape(-1, *[1] * (like.dim() - 1))


def ve_to_vp(x: Tensor, sigma: Tensor | float) -> Tensor:
    """VP latent z of the VE latent x at noise level sigma (a scalar or one per row)."""
    return x * _scale_for(sigma, x)


def vp_to_ve(z: Tensor, sigma: Tensor | float) -> Tensor:
    """VE latent x of the VP latent z at noise level sigma (a scalar or one per row)."""
    return z / _scale_for(sigma, z)


def ve_rescale(x: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """The VE latent at level ``target`` whose VP form equals that of ``x`` at level ``source``."""
    return x * float(((target**2 + 1) / (source**2 + 1)).sqrt())


def eps_from_v(v: Tensor, z: Tensor, abar: Tensor | float) -> Tensor:
    """The eps-equivalent of a v prediction for the VP latent z: sqrt(abar) v + sqrt(1 - abar) z."""
    if isinstance(abar, Tensor):
        return abar.sqrt() * v + (1 - abar).sqrt() * z
    return _root(abar) * v + _root(1 - abar) * z


def vp_noise_for(z: Tensor, x0: Tensor, abar: float) -> Tensor:
    """The noise that the VP forward step sqrt(abar) x0 + sqrt(1 - abar) noise turns into z."""
    return (z - _root(abar) * x0) / _root(1 - abar)


def ve_noise_for(x: Tensor, x0: Tensor, sigma: float) -> Tensor:
    """The noise that the VE forward step x0 + sigma noise turns into x."""
    return (x - x0) / sigma


def ve_std(sigma: float) -> float:
    """sqrt(1 + sigma^2): the scale of a VE latent at sigma (A1111's SGM noise multiplier starts there)."""
    return _root(1 + sigma**2)


def ddim_step(z: Tensor, eps: Tensor, abar: float, abar_next: float) -> Tensor:
    """One deterministic DDIM step (eta 0) of a VP latent from level ``abar`` to ``abar_next``."""
    x0 = (z - _root(1 - abar) * eps) / _root(abar)
    return _root(abar_next) * x0 + _root(1 - abar_next) * eps


def _root(value: float) -> float:
    """``value ** 0.5`` (the float power, as the official code computes it) of a level in [0, inf)."""
    return float(value**0.5)


def scaled_linear_alphas_cumprod(
    steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """abar_t of SD1.x/SD2.x/SDXL ("scaled_linear" betas), float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class DiscreteSchedule:
    """The model's discrete noise levels and the sigma <-> timestep maps between them."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2 or not torch.isfinite(abar).all():
            raise ValueError("alphas_cumprod must hold at least 2 finite values")
        if (abar <= 0).any() or (abar > 1).any() or (abar[1:] >= abar[:-1]).any():
            raise ValueError("alphas_cumprod must be strictly decreasing inside (0, 1]")
        self.alphas_cumprod = abar
        self.sigmas = ((1.0 - abar) / abar).sqrt()
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def stable_diffusion(cls) -> DiscreteSchedule:
        """The schedule every SD1.x/SD2.x/SDXL checkpoint is trained with."""
        return cls(scaled_linear_alphas_cumprod())

    @property
    def sigma_min(self) -> float:
        """Smallest trained noise level (timestep 0)."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """Largest trained noise level (timestep 999)."""
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor | float) -> Tensor:
        """Real-valued timestep of sigma (log-linear interpolation, clamped to the table)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        device = sigma.device  # the tables stay on the CPU; a CUDA sigma must not meet them there
        log_sigma = sigma.to(self.log_sigmas.device).clamp(min=1e-30).log()
        high = torch.searchsorted(self.log_sigmas, log_sigma.reshape(-1)).reshape(log_sigma.shape)
        high = high.clamp(1, len(self.log_sigmas) - 1)
        low = high - 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0.0, 1.0)
        return (low.to(torch.float64) + w).to(device)

    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        """Sigma of a real-valued timestep (the inverse of sigma_to_t)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        device = t.device
        t = t.to(self.log_sigmas.device).clamp(0, len(self.sigmas) - 1)
        low = t.floor().long().clamp(max=len(self.sigmas) - 2)
        w = t - low
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]
        return log_sigma.exp().to(device)

    def ddim_timesteps(self, steps: int) -> list[int]:
        """The official (diffusers, steps_offset 1) DDIM timesteps, largest first: 981, ..., 1."""
        n = len(self.sigmas)
        if not 1 <= steps <= n:
            raise ValueError(f"steps must be in [1, {n}], got {steps}")
        ratio = n // steps
        return [ratio * (steps - 1 - i) + 1 for i in range(steps)]

    def ddim_sigmas(self, steps: int, end: float = 0.0) -> Tensor:
        """Sigmas of the official DDIM grid followed by the end level (0, or sigma_min for parity)."""
        ts = torch.tensor(self.ddim_timesteps(steps))
        return torch.cat([self.sigmas[ts], torch.tensor([end], dtype=torch.float64)])

    def official_end(self, sigmas: Tensor) -> Tensor | None:
        """A k-diffusion DDIM-grid schedule ending at abar_0 (sigma_min) instead of 0, else None.

        The DDIM grid's last level is t = 1; below it the official code puts the clean latent at
        level abar_0 (diffusers' ``set_alpha_to_one=False``), both as the inversion's origin and as
        the sampler's end. Schedules that reach sigma_min themselves (Karras, ...) keep 0.
        """
        s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
        if len(s) < 2 or float(s[-1]) != 0.0 or not math.isclose(float(s[-2]), float(self.sigmas[1]), rel_tol=1e-5):
            return None
        return torch.cat([s[:-1], self.sigmas[:1]])

"""Noise schedules (sigmas, descending, ending in 0) used by ``KDiffusionSampler.get_sigmas``."""

from __future__ import annotations

import dataclasses
import math

import torch


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


# k_diffusion/sampling.py get_sigmas_karras
def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device='cpu'):
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho).to(device)


# k_diffusion/sampling.py get_sigmas_exponential
def get_sigmas_exponential(n, sigma_min, sigma_max, device='cpu'):
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()).to(device)


# A1111: modules/sd_schedulers.py uniform
def uniform(n, sigma_min, sigma_max, inner_model, device):
    return inner_model.get_sigmas(n).to(device)


# A1111: modules/sd_schedulers.py sgm_uniform
def sgm_uniform(n, sigma_min, sigma_max, inner_model, device):
    start = inner_model.sigma_to_t(torch.tensor(sigma_max))
    end = inner_model.sigma_to_t(torch.tensor(sigma_min))
    ts = torch.linspace(start, end, n + 1)[:-1]
    return _append_zero(torch.stack([inner_model.t_to_sigma(t) for t in ts]).float()).to(device)


# A1111: modules/sd_schedulers.py ddim_scheduler
def ddim_scheduler(n, sigma_min, sigma_max, inner_model, device):
    """sigma at timesteps 1, 1+k, 1+2k, ... (k = 1000 // n), highest first: the DDIM grid in sigma form."""
    stride = max(len(inner_model.sigmas) // n, 1)
    sigs = [float(inner_model.sigmas[t]) for t in range(1, len(inner_model.sigmas), stride)][::-1]
    return torch.FloatTensor([*sigs, 0.0]).to(device)


# A1111: modules/sd_schedulers.py Scheduler
@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: object
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list | None = None


# A1111: modules/sd_schedulers.py schedulers / schedulers_map (the subset used here)
schedulers = [
    Scheduler('automatic', 'Automatic', None),
    Scheduler('uniform', 'Uniform', uniform, need_inner_model=True),
    Scheduler('karras', 'Karras', get_sigmas_karras, default_rho=7.0),
    Scheduler('exponential', 'Exponential', get_sigmas_exponential),
    Scheduler('sgm_uniform', 'SGM Uniform', sgm_uniform, need_inner_model=True, aliases=["SGMUniform"]),
    Scheduler('ddim', 'DDIM', ddim_scheduler, need_inner_model=True),
]
schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}

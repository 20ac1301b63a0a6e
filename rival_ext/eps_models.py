"""Adapters from UNets to the two model forms RIVAL works with.

``UNetEps`` gives eps(z, t, cond) for an ldm/sgm UNet (eps or v parameterization, the v output
converted to its eps-equivalent); ``KDenoiser`` turns any eps model into the k-diffusion denoiser
D(x; sigma) = x - sigma * eps(c_in x, t(sigma)) that A1111's k-diffusion samplers use.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from .conditioning import Conditioning
from .noise import DiscreteSchedule, abar_of_sigma, eps_from_v, ve_to_vp


class EpsModel(Protocol):
    """eps prediction for VP latents z (B,C,H,W) at real-valued timesteps t (B,)."""

    def __call__(self, z: Tensor, t: Tensor, cond: Conditioning) -> Tensor: ...


class UNetEps:
    """eps(z, t, cond) of an ldm/sgm ``UNetModel`` called as unet(x, timesteps=, context=, y=)."""

    def __init__(self, unet: nn.Module, schedule: DiscreteSchedule, parameterization: str = "eps") -> None:
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization must be 'eps' or 'v', got {parameterization!r}")
        self.unet = unet
        self.schedule = schedule
        self.parameterization = parameterization

    def __call__(self, z: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """eps of the rows (v outputs converted with abar at t)."""
        kwargs = {"timesteps": t.to(z.dtype), "context": cond.context.to(z.dtype)}
        if cond.y is not None:
            kwargs["y"] = cond.y.to(z.dtype)
        out: Tensor = self.unet(z, **kwargs)
        if self.parameterization == "eps":
            return out
        abar = abar_of_sigma(self.schedule.t_to_sigma(t)).to(z.dtype).reshape(-1, 1, 1, 1)
        return eps_from_v(out, z, abar)


class KDenoiser:
    """k-diffusion denoiser over an eps model, for one fixed condition (e.g. the inversion's)."""

    def __init__(self, model: EpsModel, schedule: DiscreteSchedule, cond: Conditioning) -> None:
        self.model = model
        self.schedule = schedule
        self.cond = cond

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x0 estimate of the VE latents ``x`` at noise levels ``sigma``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        t = self.schedule.sigma_to_t(sigma).to(x.device)
        eps = self.model(ve_to_vp(x, sigma), t, self.cond.repeat(x.shape[0]) if len(self.cond) == 1 else self.cond)
        return x - sigma.to(x.dtype).reshape(-1, 1, 1, 1) * eps

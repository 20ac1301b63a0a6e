"""DDIM inversion of the reference latent into a chain, on any sampler's sigma schedule.

The chain is built in the VE form on the exact sigmas the sampler will visit (the last sigma is
the origin where the clean latent sits: 0 for k-diffusion schedules, sigma_min for parity with
the official code, which treats the clean latent as level abar_0). Segment k runs from node k+1
up to node k; the inversion evaluates the model at the *target* level on the *source* latent,
as the official code does, which makes it the exact adjoint of an Euler/DDIM sampler.

Between nodes the reference is read with the segment rule x_R(sigma) = x0_k + sigma * e_k: the
DDIM path the inversion itself assumes, continuous, exact at the nodes, sampler independent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .noise import ve_rescale, ve_to_vp, vp_to_ve

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""k-diffusion style denoiser: (x VE latent (B,C,H,W), sigma (B,)) -> x0 estimate."""

NODE_RTOL = 1e-5


class NonFiniteInversion(ValueError):
    """The model returned NaN/inf during the inversion (typically fp16 overflow)."""


@dataclass(frozen=True)
class InversionChain:
    """Nodes c_0 (top) .. c_N (origin) with each segment's clean estimate and noise."""

    sigmas: Tensor  # (N+1,) float64, strictly decreasing; sigmas[-1] is the origin
    nodes: Tensor  # (N+1, C, H, W) VE latents at those sigmas
    x0: Tensor  # (N, C, H, W) segment k's implied clean latent
    eps: Tensor  # (N, C, H, W) segment k's noise prediction

    @property
    def steps(self) -> int:
        """Number of segments (inversion model calls)."""
        return len(self.x0)

    @property
    def top(self) -> Tensor:
        """The inverted latent at the schedule's largest sigma (VE)."""
        return self.nodes[0]

    def segment(self, sigma: float) -> int:
        """Index of the segment below sigma, the one a sampler at sigma is about to traverse."""
        above = (self.sigmas >= float(sigma) * (1 - NODE_RTOL)).nonzero()
        k = int(above[-1]) if len(above) else 0
        return min(k, self.steps - 1)

    def node_index(self, sigma: float) -> int | None:
        """Index of the node at sigma (relative tolerance for float32 schedules; the nearest of two), else None."""
        distance = (self.sigmas - float(sigma)).abs()
        if not (distance <= NODE_RTOL * self.sigmas.clamp(min=1e-12)).any():
            return None
        return int(distance.argmin())

    def reference_at(self, sigma: float) -> Tensor:
        """The reference's VE latent at sigma: the node itself on the grid, the segment rule off it."""
        node = self.node_index(sigma)
        if node is not None:
            return self.nodes[node]
        k = self.segment(sigma)
        return self.x0[k] + float(sigma) * self.eps[k]

    def reference_vp(self, sigma: float) -> Tensor:
        """The reference's VP latent at sigma (what the UNet sees)."""
        return ve_to_vp(self.reference_at(sigma), float(sigma))

    @property
    def origin_latent(self) -> Tensor:
        """The clean reference latent z0 in VP form (the keep region's final value)."""
        return ve_to_vp(self.nodes[-1], float(self.sigmas[-1]))


def check_schedule(sigmas: Tensor | list[float]) -> Tensor:
    """Validate a sampler schedule: >= 2 finite, non-negative, strictly decreasing sigmas."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() < 2:
        raise ValueError("the sigma schedule needs at least 2 values (a start and an end)")
    if not torch.isfinite(s).all():
        raise ValueError("the sigma schedule contains NaN or inf")
    if (s < 0).any():
        raise ValueError("the sigma schedule contains negative values")
    if (s[1:] >= s[:-1]).any():
        raise ValueError("the sigma schedule must be strictly decreasing")
    return s


def invert(
    z0: Tensor,
    denoiser: Denoiser,
    sigmas: Tensor | list[float],
    callback: Callable[[int, int], None] | None = None,
) -> InversionChain:
    """DDIM-invert the clean VP latent ``z0`` (1,C,H,W) along ``sigmas`` (largest first).

    ``denoiser`` must already carry the inversion condition (guidance 1, no CFG). ``callback``
    is called as callback(done, total) after each model call; it may raise to interrupt.
    """
    s = check_schedule(sigmas)
    if z0.dim() == 3:
        z0 = z0.unsqueeze(0)
    if z0.dim() != 4 or z0.shape[0] != 1:
        raise ValueError(f"the reference latent must have shape (1, C, H, W), got {tuple(z0.shape)}")
    if not z0.is_floating_point():
        raise ValueError(f"the reference latent must be a float tensor, got {z0.dtype}")
    if not torch.isfinite(z0).all():
        raise ValueError("the reference latent contains NaN or inf")
    store = torch.float64 if z0.dtype == torch.float64 else torch.float32
    n = len(s) - 1
    nodes = [torch.empty(0)] * (n + 1)
    x0s = [torch.empty(0)] * n
    epss = [torch.empty(0)] * n
    nodes[n] = vp_to_ve(z0[0].to(store), s[n])
    for k in range(n - 1, -1, -1):
        src, tgt = s[k + 1], s[k]
        # The UNet sees the source latent with the target level's timestep (official scheme).
        x_in = ve_rescale(nodes[k + 1], src, tgt)
        sigma_vec = torch.full((1,), float(tgt), dtype=z0.dtype, device=z0.device)
        denoised = denoiser(x_in.unsqueeze(0).to(z0.dtype), sigma_vec)[0].to(store)
        e = (x_in - denoised) / float(tgt)
        if not torch.isfinite(e).all():
            raise NonFiniteInversion(f"the inversion produced NaN/inf at sigma {float(tgt):.4g}")
        epss[k] = e
        x0s[k] = nodes[k + 1] - float(src) * e
        nodes[k] = nodes[k + 1] + float(tgt - src) * e
        if callback is not None:
            callback(n - k, n)
    return InversionChain(s, torch.stack(nodes), torch.stack(x0s), torch.stack(epss))


def reconstruct(chain: InversionChain, denoiser: Denoiser) -> Tensor:
    """Sample back down the chain's sigmas from its top with Euler (guidance 1): VP latent (1,C,H,W).

    Shows how faithful the inversion is: a perfect inversion gives the clean reference back.
    """
    x = chain.top.unsqueeze(0)
    s = chain.sigmas
    for k in range(chain.steps):
        sigma = torch.full((1,), float(s[k]), dtype=x.dtype, device=x.device)
        x = x + float(s[k + 1] - s[k]) * (x - denoiser(x, sigma)) / float(s[k])
    return ve_to_vp(x, s[-1])


def coarse_schedule(sigmas: Tensor | list[float], steps: int) -> Tensor:
    """At most ``steps`` inversion segments spread over a sampler schedule (official ``invert_step``).

    The top sigma (where sampling starts) and the origin are always kept, so the start latent is a
    node; the sampler's other levels are read from the chain with the segment rule. ``steps`` at
    or above the schedule's own length returns it unchanged.
    """
    s = check_schedule(sigmas)
    n = len(s) - 1
    if steps < 1:
        raise ValueError(f"inversion steps must be at least 1, got {steps}")
    if steps >= n:
        return s
    picks = torch.unique(torch.linspace(0, n, steps + 1, dtype=torch.float64).round().long())
    return s[picks]

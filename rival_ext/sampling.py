"""A complete RIVAL generation for a k-diffusion style model: the library's reference driver.

``RivalUNet`` drives a ``RivalSession`` (hooks, evaluations, AdaIN after guidance) around the model;
the samplers are plain loops over its guided noise prediction.

One UNet call per model evaluation carries the reference row(s) in front of all generated rows
(cond rows, then uncond rows, as A1111 batches them). The reference rows sit on the inversion
chain at the evaluation's sigma; generated rows read their keys/values by role; after CFG the
generated noise prediction is normalised to the reference-cond row's while t > t_early.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .attention import SelfAttentionInjector
from .chain import check_schedule
from .conditioning import Conditioning, Role
from .eps_models import UNetEps
from .feature_cache import FeatureCache
from .latent_init import force_keep
from .noise import DiscreteSchedule, ddim_step, ve_to_vp
from .params import RivalParams
from .reference_rows import Reference
from .session import RivalSession


class RivalUNet:
    """Evaluates rows of the generated branch through a ``RivalSession`` on the model's UNet.

    ``injector`` is installed by the caller; each evaluation installs the session's row hooks for
    its duration, so between evaluations the UNet is the caller's.
    """

    def __init__(
        self,
        model: UNetEps,
        injector: SelfAttentionInjector,
        params: RivalParams,
        reference: Reference,
        features: FeatureCache | None = None,
    ) -> None:
        self.model = model
        self.params = params
        self.reference = reference
        self.session = RivalSession(
            model.unet, params, reference, model.parameterization, features, injector=injector
        )

    def __call__(
        self, z: Tensor, sigma: float, t: float, cond: Conditioning, roles: Sequence[Role]
    ) -> tuple[Tensor, Tensor | None]:
        """eps of the rows ``z`` (VP) and of the reference-cond row (None if not computed).

        With plain attention and no AdaIN at this t no reference row is added, so the call is
        exactly the one a plain generation makes.
        """
        with self.session:
            return self._evaluate(z, sigma, t, cond, roles)

    def _evaluate(
        self, z: Tensor, sigma: float, t: float, cond: Conditioning, roles: Sequence[Role]
    ) -> tuple[Tensor, Tensor | None]:
        if len(roles) != z.shape[0] or len(cond) != z.shape[0]:
            raise ValueError(f"{z.shape[0]} rows need as many roles and conditioning rows")
        evaluation = self.session.begin(sigma, t, roles)
        eps = self.model(z, torch.full((len(z),), t, dtype=torch.float64, device=z.device), cond)
        return eps, evaluation.eps_ref

    def guided_eps(
        self, z: Tensor, sigma: float, t: float, cond: Conditioning, uncond: Conditioning, cfg_scale: float
    ) -> Tensor:
        """CFG noise prediction of each generated image (B rows), then AdaIN while t > t_early."""
        b = z.shape[0]
        roles = [Role.COND] * b + [Role.UNCOND] * b
        with self.session:
            eps, _ = self._evaluate(torch.cat([z, z]), sigma, t, Conditioning.cat([cond, uncond]), roles)
            eps_c, eps_u = eps[:b], eps[b:]
            return self.session.after_guidance(eps_u + cfg_scale * (eps_c - eps_u))


def sample_euler(
    rival: RivalUNet,
    schedule: DiscreteSchedule,
    x: Tensor,
    sigmas: Tensor | list[float],
    cond: Conditioning,
    uncond: Conditioning,
    cfg_scale: float,
    regenerate: Tensor | None = None,
) -> Tensor:
    """Euler (= DDIM, eta 0) from the VE latent ``x`` at sigmas[0] down to sigmas[-1]; returns VP.

    ``regenerate`` (h,w) bool turns on example-based inpainting: the keep region is put on the
    reference chain before every evaluation and equals the clean reference at the end.
    """
    s = check_schedule(sigmas)
    chain = rival.reference.chain
    for i in range(len(s) - 1):
        sigma = float(s[i])
        if regenerate is not None:
            x = force_keep(x, chain.reference_at(sigma), regenerate)
        t = float(schedule.sigma_to_t(sigma))
        eps = rival.guided_eps(ve_to_vp(x, sigma), sigma, t, cond, uncond, cfg_scale)
        x = x + float(s[i + 1] - s[i]) * eps
    z = ve_to_vp(x, s[-1])
    if regenerate is not None:
        z = force_keep(z, chain.origin_latent, regenerate)
    return z


def sample_ddim(
    rival: RivalUNet,
    schedule: DiscreteSchedule,
    z: Tensor,
    timesteps: Sequence[int],
    cond: Conditioning,
    uncond: Conditioning,
    cfg_scale: float,
    regenerate: Tensor | None = None,
) -> Tensor:
    """The official DDIM loop (VP, eta 0) over integer ``timesteps`` (largest first).

    Each step goes to the next timestep; the last one to abar_0, as diffusers'
    ``set_alpha_to_one=False`` does. The chain must be built on the same levels.
    """
    abar = schedule.alphas_cumprod
    chain = rival.reference.chain
    levels = [*timesteps[1:], 0]
    for t, t_next in zip(timesteps, levels, strict=True):
        sigma = float(schedule.sigmas[t])
        if regenerate is not None:
            z = force_keep(z, chain.reference_vp(sigma), regenerate)
        eps = rival.guided_eps(z, sigma, float(t), cond, uncond, cfg_scale)
        z = ddim_step(z, eps, float(abar[t]), float(abar[t_next]))
    if regenerate is not None:
        z = force_keep(z, chain.origin_latent, regenerate)
    return z

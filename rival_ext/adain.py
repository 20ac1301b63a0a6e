"""Step-wise normalization: AdaIN of the generated noise prediction to the reference's.

Official rule: per image and per channel over the spatial positions, with torch's unbiased
variance and 1e-5 added to both variances, applied after classifier-free guidance while
t > t_early. Statistics are computed in float32 at least (fp16 variances overflow).

Beyond the paper (``normalizer``): the target statistics of several references are their weighted means
(positive weights), a reference mask takes a reference's statistics from its part only, and the normalized
prediction is blended in by a strength, times the mask of where RIVAL acts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

ADAIN_EPS = 1e-5
KEEP = 0.5  # a position takes part in a reference's statistics where its mask is at least this

Normalize = Callable[[Tensor], Tensor]  # a guided eps (B,C,H,W) -> its normalization


def adain(x: Tensor, target: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """Give each image's channels of ``x`` (B,C,H,W) the mean and std of ``target``'s (1 or B rows)."""
    if x.dim() != 4 or target.dim() != 4 or target.shape[1:] != x.shape[1:]:
        raise ValueError(f"AdaIN needs (B,C,H,W) tensors of equal C,H,W; got {tuple(x.shape)}, "
                         f"{tuple(target.shape)}")
    if target.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"AdaIN target must have 1 or {x.shape[0]} rows, got {target.shape[0]}")
    work = torch.promote_types(x.dtype, torch.float32)
    xf, tf = x.to(work).flatten(2), target.to(work).flatten(2)
    mu_x, mu_t = xf.mean(-1, keepdim=True), tf.mean(-1, keepdim=True)
    std_x = (xf.var(-1, keepdim=True) + eps).sqrt()
    std_t = (tf.var(-1, keepdim=True) + eps).sqrt()
    return ((xf - mu_x) / std_x * std_t + mu_t).reshape(x.shape).to(x.dtype)


def statistics(target: Tensor, mask: Tensor | None = None, eps: float = ADAIN_EPS) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (variance + eps) of ``target`` (1,C,H,W), over the positions of ``mask``
    (H,W; at least two of them) or all."""
    tf = target.to(torch.promote_types(target.dtype, torch.float32)).flatten(2)
    if mask is not None:
        keep = (mask.to(target.device).flatten() >= KEEP).nonzero().flatten()
        if len(keep) >= 2:
            tf = tf[..., keep]
    return tf.mean(-1, keepdim=True), (tf.var(-1, keepdim=True) + eps).sqrt()


def adain_to(x: Tensor, mean: Tensor, std: Tensor, eps: float = ADAIN_EPS) -> Tensor:
    """Each image's channels of ``x`` (B,C,H,W) given the target ``mean`` and ``std`` (1,C,1)."""
    work = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(work).flatten(2)
    mu_x, std_x = xf.mean(-1, keepdim=True), (xf.var(-1, keepdim=True) + eps).sqrt()
    return ((xf - mu_x) / std_x * std.to(work) + mean.to(work)).reshape(x.shape).to(x.dtype)


def normalizer(targets: Sequence[Tensor], weights: Sequence[float], masks: Sequence[Tensor | None],
               strength: float = 1.0, where: Tensor | None = None) -> Normalize:
    """AdaIN towards the weighted statistics of several references (positive ``weights``), each over its mask,
    blended in by ``strength`` times ``where`` (H,W: where RIVAL acts)."""
    stats = [statistics(target, mask) for target, mask in zip(targets, masks)]
    total = sum(weights)
    mean = sum(w * m for w, (m, _) in zip(weights, stats)) / total
    std = sum(w * s for w, (_, s) in zip(weights, stats)) / total
    assert isinstance(mean, Tensor) and isinstance(std, Tensor), "AdaIN needs at least one target"

    def normalize(x: Tensor) -> Tensor:
        normalized = adain_to(x, mean, std)
        if strength == 1.0 and where is None:
            return normalized
        amount = strength if where is None else strength * where.to(x.device, x.dtype)
        return x + amount * (normalized - x)

    return normalize


def adain_denoised(denoised: Tensor, x: Tensor, sigma: Tensor, eps_target: Tensor | Normalize) -> Tensor:
    """AdaIN for a denoiser that returns x0 (k-diffusion): normalise eps = (x - D) / sigma.

    CFG on x0 is the same affine combination as CFG on eps, so this equals the official
    "AdaIN after CFG" on the noise prediction; ``sigma`` is per row (B,). ``eps_target`` is the reference's
    eps (the official AdaIN) or a ``normalizer``.
    """
    s = sigma.reshape(-1, 1, 1, 1).to(torch.promote_types(x.dtype, torch.float32))
    eps = (x.to(s.dtype) - denoised.to(s.dtype)) / s
    normalized = eps_target(eps) if callable(eps_target) else adain(eps, eps_target.to(s.dtype))
    return (x.to(s.dtype) - s * normalized).to(denoised.dtype)

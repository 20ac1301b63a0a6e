"""Step-wise normalization: AdaIN of the generated noise prediction to the reference's.

Official rule: per image and per channel over the spatial positions, with torch's unbiased
variance and 1e-5 added to both variances, applied after classifier-free guidance while
t > t_early. Statistics are computed in float32 at least (fp16 variances overflow).
"""

from __future__ import annotations

import torch
from torch import Tensor

ADAIN_EPS = 1e-5


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


def adain_denoised(denoised: Tensor, x: Tensor, sigma: Tensor, eps_target: Tensor) -> Tensor:
    """AdaIN for a denoiser that returns x0 (k-diffusion): normalise eps = (x - D) / sigma.

    CFG on x0 is the same affine combination as CFG on eps, so this equals the official
    "AdaIN after CFG" on the noise prediction; ``sigma`` is per row (B,).
    """
    s = sigma.reshape(-1, 1, 1, 1).to(torch.promote_types(x.dtype, torch.float32))
    eps = (x.to(s.dtype) - denoised.to(s.dtype)) / s
    return (x.to(s.dtype) - s * adain(eps, eps_target.to(s.dtype))).to(denoised.dtype)

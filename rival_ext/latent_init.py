"""Where the generated branch starts, and the example-based inpainting keep region.

The official "latent alignment" is one random spatial permutation of the inverted latent,
shared by all channels: every channel keeps exactly its values (mean, variance, histogram), the
layout is destroyed. Here it is seeded by the image's seed, so a generation is reproducible and
A1111's own random number stream is never consumed.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .params import InitLatent


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))


def shuffle_latent(latent: Tensor, seed: int) -> Tensor:
    """One seeded permutation of the H*W positions of ``latent`` (C,H,W), the same for all channels."""
    c, h, w = latent.shape
    perm = torch.randperm(h * w, generator=_generator(seed)).to(latent.device)
    return latent.reshape(c, h * w)[:, perm].reshape(c, h, w)


def initial_latents(top: Tensor, seeds: list[int], mode: InitLatent) -> Tensor | None:
    """Start latents (B,C,H,W) at the schedule's first sigma from the chain's top (C,H,W).

    None for ``InitLatent.NOISE``: the sampler's own seed noise is kept.
    """
    mode = InitLatent(mode)
    if mode is InitLatent.NOISE:
        return None
    if mode is InitLatent.INVERTED:
        return top.unsqueeze(0).repeat(len(seeds), 1, 1, 1)
    return torch.stack([shuffle_latent(top, seed) for seed in seeds])


def inpaint_initial_latent(top: Tensor, regenerate: Tensor, seed: int) -> Tensor:
    """Keep region = the chain's top; regenerate region = a seeded permutation of its own values."""
    _check_mask(regenerate, top)
    out = top.clone()
    positions = regenerate.flatten().nonzero().flatten().to(top.device)
    if len(positions):
        perm = positions[torch.randperm(len(positions), generator=_generator(seed)).to(top.device)]
        flat = out.reshape(top.shape[0], -1)
        flat[:, positions] = top.reshape(top.shape[0], -1)[:, perm]
    return out


def force_keep(x: Tensor, reference: Tensor, regenerate: Tensor) -> Tensor:
    """``x`` (B,C,H,W) with its keep region (where ``regenerate`` is False) taken from ``reference``."""
    _check_mask(regenerate, x[0])
    keep = ~regenerate.to(x.device)
    return torch.where(keep, reference.to(x.dtype).expand_as(x), x)


def latent_mask(mask: Image.Image, latent_size: tuple[int, int], invert: bool = False) -> Tensor:
    """Regenerate mask (h,w) bool on the latent grid from an A1111 mask image (white = regenerate).

    As the official code: grayscale, LANCZOS resize to the latent grid, threshold at 128.
    ``invert`` follows A1111's "inpaint not masked".
    """
    if not isinstance(mask, Image.Image):
        raise ValueError("the inpainting mask must be an image")
    h, w = latent_size
    small = np.asarray(mask.convert("L").resize((w, h), Image.Resampling.LANCZOS))
    regenerate = torch.from_numpy(small >= 128)
    return ~regenerate if invert else regenerate


def _check_mask(regenerate: Tensor, latent: Tensor) -> None:
    if regenerate.dtype != torch.bool or regenerate.shape != latent.shape[-2:]:
        raise ValueError(
            f"the mask must be a bool tensor of the latent's size {tuple(latent.shape[-2:])}, "
            f"got {regenerate.dtype} {tuple(regenerate.shape)}"
        )

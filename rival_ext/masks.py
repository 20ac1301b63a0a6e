"""Masks of RIVAL's reach: on the latent grid, and at each self-attention layer's token grid.

``mask`` says where in the generated image RIVAL acts (white: RIVAL, black: the model's own attention and no
normalization, grey in between); ``reference_mask`` which part of a reference its keys, values and statistics come
from. Both are taken like the reference image (centre-cropped to the generation's aspect ratio), averaged onto the
latent grid, and averaged again onto a layer's coarser token grid. An all-white mask is no mask at all.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .image import fit, to_rgb

KEEP = 0.5  # a reference token takes part where its mask averages at least this


def latent_mask(image: Image.Image | None, width: int, height: int) -> Tensor | None:
    """(height/8, width/8) float in [0, 1] from a mask image of any size and mode (None: everywhere)."""
    if image is None:
        return None
    gray = fit(to_rgb(image), width, height).convert("L").resize((width // 8, height // 8), Image.Resampling.BOX)
    mask = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)
    return None if bool((mask >= 1.0).all()) else mask


@lru_cache(maxsize=64)
def on_layer(mask: Tensor, tokens: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``at_tokens`` on the layer's device and dtype, computed once per mask and grid: a blended plan asks for it at
    every layer of every call (masks are never changed in place; the cache holds a pass's few small tensors)."""
    return at_tokens(mask, tokens).to(device, dtype)


@lru_cache(maxsize=64)
def kept_on_layer(mask: Tensor, tokens: int, device: torch.device) -> Tensor:
    """``kept_tokens`` on the layer's device, computed once per reference mask and grid (as ``on_layer``)."""
    return kept_tokens(mask, tokens).to(device)


def at_tokens(mask: Tensor, tokens: int) -> Tensor:
    """The mask averaged onto a layer whose grid has ``tokens`` positions: the latent grid, or one the UNet halved
    once or more (rounding up, as its stride-2 convolutions do for a size that is not a multiple of 64 pixels)."""
    h, w = mask.shape
    factor = 1
    while factor <= max(h, w) and math.ceil(h / factor) * math.ceil(w / factor) > tokens:
        factor *= 2
    if math.ceil(h / factor) * math.ceil(w / factor) != tokens:
        raise ValueError(f"a layer of {tokens} tokens does not tile the {h}x{w} latent grid")
    return torch.nn.functional.avg_pool2d(mask[None, None], factor, ceil_mode=True)[0, 0].flatten()


def kept_tokens(mask: Tensor, tokens: int) -> Tensor:
    """Indices of a layer's tokens inside the reference mask (at least its strongest one)."""
    weights = at_tokens(mask, tokens)
    kept = (weights >= KEEP).nonzero().flatten()
    return kept if len(kept) else weights.argmax().reshape(1)

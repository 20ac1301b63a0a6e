"""The reference image: any PIL mode in, an RGB tensor of the generation's size out.

The official code centre-crops to a square and resizes to 512; for W x H generations the
reference is centre-cropped to the generation's aspect ratio and resized to W x H, so that the
latent permutation and the inpainting mask line up with the generated latent.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor

MAX_PIXELS = 16384 * 16384


def to_rgb(image: object, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB version of a PIL image of any mode (alpha flattened on ``background``, 16-bit scaled)."""
    if image is None:
        raise ValueError("no reference image: upload one or turn RIVAL off")
    if isinstance(image, np.ndarray):
        image = _from_array(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"the reference must be an image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError("the reference image is empty (0 pixels)")
    if image.width * image.height > MAX_PIXELS:
        raise ValueError(f"the reference image is too large ({image.width}x{image.height})")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        top = 1.0 if array.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: npt.NDArray[Any]) -> Image.Image:
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        if array.dtype != np.uint8:
            array = np.clip(array.astype(np.float64), 0, 255).astype(np.uint8)
        return Image.fromarray(array.squeeze(2) if array.ndim == 3 and array.shape[2] == 1 else array)
    raise ValueError(f"the reference array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop ``image`` to width:height and resize it to exactly width x height (LANCZOS)."""
    if width < 8 or height < 8:
        raise ValueError(f"the generation size must be at least 8x8, got {width}x{height}")
    src_w, src_h = image.size
    if src_w * height > src_h * width:  # too wide: crop the sides
        crop_w, crop_h = max(1, round(src_h * width / height)), src_h
    else:
        crop_w, crop_h = src_w, max(1, round(src_w * height / width))
    left, top = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    cropped = image.crop((left, top, left + crop_w, top + crop_h))
    return cropped.resize((width, height), Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image) -> Tensor:
    """(1,3,H,W) float32 in [-1, 1], the VAE's input range."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def prepare_reference(image: object, width: int, height: int) -> Tensor:
    """Any reference image -> (1,3,height,width) tensor in [-1, 1]."""
    return to_tensor(fit(to_rgb(image), width, height))


def pixel_hash(image: Image.Image) -> str:
    """Short content hash of the RGB pixels (recorded in infotext; part of the chain cache key)."""
    rgb = to_rgb(image)
    digest = hashlib.sha256(f"{rgb.size}".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()[:12]

"""The crop of inpaint "Only masked" (``modules/masking.py`` of A1111 v1.10.1: ``get_crop_region_v2``,
``expand_crop_region``), written from its documented behaviour."""

from __future__ import annotations


# A1111: modules/masking.py get_crop_region_v2
def get_crop_region_v2(mask, pad=0):
    """The bounding box (x1, y1, x2, y2) of the mask's non-zero pixels grown by ``pad`` inside the image;
    None for an all-black mask."""
    box = mask.getbbox()
    if not box or not pad:
        return box
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.size[0]), min(y2 + pad, mask.size[1])


def _grow(lo: int, hi: int, size: int, wanted: float) -> tuple[int, int]:
    """Grow [lo, hi) about its centre to ``wanted`` length, shifted back inside [0, size)."""
    extra = int(wanted - (hi - lo))
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if hi >= size:
        lo, hi = lo - (hi - size), size
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, size)


# A1111: modules/masking.py expand_crop_region
def expand_crop_region(crop_region, processing_width, processing_height, image_width, image_height):
    """Grow the crop to the aspect ratio of the generation size (a 128x32 mask box at 512x512 becomes 128x128)."""
    x1, y1, x2, y2 = crop_region
    ratio = processing_width / processing_height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _grow(y1, y2, image_height, (x2 - x1) / ratio)
    else:
        x1, x2 = _grow(x1, x2, image_width, (y2 - y1) * ratio)
    return x1, y1, x2, y2

"""``resize_image`` (modes 0 resize, 1 crop and resize, 2 resize and fill) and ``flatten`` as in A1111,
with plain LANCZOS resizing (no upscaler models)."""

from __future__ import annotations

from PIL import Image, ImageOps

LANCZOS = Image.Resampling.LANCZOS


def resize_image(resize_mode, im, width, height, upscaler_name=None):
    if resize_mode == 0:
        return im.resize((width, height), resample=LANCZOS)

    ratio, src_ratio = width / height, im.width / im.height
    if resize_mode == 1:  # cover the target, crop the overflow (centred)
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
    else:  # fit inside the target, then stretch the edge rows/columns into the empty bands
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = im.resize((src_w, src_h), resample=LANCZOS)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))

    if resize_mode == 2 and ratio != src_ratio:
        if ratio < src_ratio:
            band = height // 2 - src_h // 2
            if band > 0:
                res.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
                res.paste(resized.resize((width, band), box=(0, resized.height, width, resized.height)),
                          box=(0, band + src_h))
        else:
            band = width // 2 - src_w // 2
            if band > 0:
                res.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
                res.paste(resized.resize((band, height), box=(resized.width, 0, resized.width, height)),
                          box=(band + src_w, 0))
    return res


def flatten(img, bgcolor):
    """RGBA -> RGB over ``bgcolor`` (e.g. "#ffffff"); other modes are just converted to RGB."""
    if img.mode == "RGBA":
        background = Image.new('RGBA', img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert('RGB')


def fix_image(image):
    if image is None:
        return None
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGB", "P") and isinstance(image.info.get("transparency"), bytes):
            image = image.convert("RGBA")
    except Exception:
        pass
    return image


def read(fp, **kwargs):
    return fix_image(Image.open(fp, **kwargs))

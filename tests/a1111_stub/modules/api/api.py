"""``decode_base64_to_image`` / ``encode_pil_to_base64`` of A1111's API (no network: URLs are refused)."""

from __future__ import annotations

import base64
import io

from modules import images
from modules.shared import opts

try:
    from fastapi.exceptions import HTTPException
except ImportError:  # gradio 3.41 brings fastapi; this is only a fallback
    class HTTPException(Exception):
        def __init__(self, status_code: int, detail=None):
            super().__init__(detail)
            self.status_code, self.detail = status_code, detail


def decode_base64_to_image(encoding: str):
    """Base64 (optionally a ``data:image/...;base64,`` URL) -> PIL image; errors are HTTP 500 as in A1111."""
    if encoding.startswith("http://") or encoding.startswith("https://"):
        if not opts.api_enable_requests:
            raise HTTPException(status_code=500, detail="Requests not allowed")
        raise HTTPException(status_code=500, detail="Invalid image url")  # the stub has no network
    if encoding.startswith("data:image/"):
        encoding = encoding.split(";")[1].split(",")[1]
    try:
        return images.read(io.BytesIO(base64.b64decode(encoding)))
    except Exception as e:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from e


def encode_pil_to_base64(image) -> bytes:
    """PNG bytes, base64-encoded (A1111 honours opts.samples_format; PNG is its default)."""
    if isinstance(image, str):
        return image
    with io.BytesIO() as output:
        image.save(output, format="PNG")
        return base64.b64encode(output.getvalue())

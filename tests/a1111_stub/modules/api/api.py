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


def init_script_args(script_runner, alwayson_scripts: dict) -> list:
    """``p.script_args`` of an API request (``Api.init_default_script_args`` + ``Api.init_script_args`` in
    ``modules/api/api.py``, v1.10.1): every script's slots start as the ``.value`` of each component its
    ``ui()`` returns; then only the first ``len(args)`` slots of each ``alwayson_scripts[name]["args"]`` are
    overwritten. A request ``{"args": [dict]}`` therefore reaches ``process()`` as ``(dict, *panel defaults)``.
    Script names are matched case-insensitively against ``title()`` (``script_name_to_index``)."""
    script_args = script_runner.default_script_args()
    for name, request in alwayson_scripts.items():
        script = next((s for s in script_runner.alwayson_scripts if s.title().lower() == name.lower()), None)
        if script is None:
            raise HTTPException(status_code=422, detail=f"always on script {name} not found")
        args = request.get("args", [])
        for index in range(min(script.args_to - script.args_from, len(args))):
            script_args[script.args_from + index] = args[index]
    return script_args


def handle_exception(e: Exception) -> tuple[int, dict]:
    """(HTTP status, body) of an exception raised by an API route (``handle_exception`` in
    ``modules/api/api.py``, v1.10.1): only *instance* attributes count (``vars(e)``), so a ``status_code``
    defined on the exception class is ignored and the answer is 500."""
    body = {"error": type(e).__name__, "detail": vars(e).get("detail", ""), "body": vars(e).get("body", ""),
            "errors": str(e)}
    return vars(e).get("status_code", 500), body

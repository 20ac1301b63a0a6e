"""The panel's values, from the UI's positional list or the API's single dict, validated.

The positional order is the order of the panel's controls and only ever grows at the end, so
saved UI settings and API clients that send a list keep working. API clients should send one
dict of named values instead: unknown names and bad values are rejected with a message that
names them. A1111's API pads the script's args after that dict with the panel's defaults
(``api.py`` ``init_default_script_args``/``init_script_args``), so a dict may be followed by
exactly those defaults; anything else after it is refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import numbers
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..params import PRESETS, ReferencePrompt, RivalParams, preset, timestep_value
from ..request import RivalInputError, RivalRequest
from .fields import CUSTOM, FIELDS, PRESET_LABELS, TABLE, panel_value


def panel_defaults(preset_name: str) -> dict[str, object]:
    """The value each panel control starts with (what A1111's API pads script args with)."""
    base = preset(preset_name if preset_name in PRESETS else "variation")
    return {f.name: panel_value(f, base) for f in TABLE}


def parse_args(args: Sequence[object], default_preset: str = "variation") -> RivalRequest:
    """RivalRequest from the script's args: the positional UI values, or a dict from the API.

    A dict may be followed by the panel's defaults for ``default_preset`` (A1111's API padding).
    """
    if len(args) >= 1 and isinstance(args[0], dict):
        _check_padding(args[1:], panel_defaults(default_preset))
        return parse_named(args[0])
    if len(args) > len(FIELDS):
        raise RivalInputError(f"expected at most {len(FIELDS)} positional values, got {len(args)}")
    return parse_named(dict(zip(FIELDS, args)), positional=True)


def parse_named(values: dict[str, object], positional: bool = False) -> RivalRequest:
    """RivalRequest from named values; a preset supplies every parameter that is not given.

    Only types are checked here; RivalParams validates the parameters' values.
    """
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise RivalInputError(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    named: dict[str, object] = {}
    changes: dict[str, object] = {}
    for f in TABLE:
        value = values.get(f.name)
        if f.kind == "image":
            continue
        if f.kind == "preset":
            named[f.name] = _preset_name(values.get(f.name, "variation"))
        elif f.param and value is None:
            continue
        elif f.kind == "bool":
            (changes if f.param else named)[f.name] = _bool(values, f.name, f.default)
        elif f.kind == "number":
            changes[f.name] = _library(timestep_value, f.name, value)
        elif f.kind == "choice":
            changes[f.name] = _choice(value, f.name, f.choices)
        elif f.kind == "text":
            if not isinstance(value, str):
                raise RivalInputError(f"{f.name} must be a string")
            changes[f.name] = value
    base = RivalParams() if named["preset"] == CUSTOM else preset(named["preset"]).params
    params = _library(base.with_values, **changes)
    if not same_as_preset(params, base):
        named["preset"] = CUSTOM  # the infotext's preset must describe the values used
    image = values.get("reference_image")
    named["reference_image"] = decode_image(image) if named["enabled"] and image is not None else None
    return RivalRequest(params=params, **named)


def same_as_preset(params: RivalParams, base: RivalParams) -> bool:
    """Whether ``params`` are the preset's (the custom text counts only when it is the reference text)."""
    if params.reference_prompt is not ReferencePrompt.CUSTOM:
        params = params.with_values(custom_prompt=base.custom_prompt)
    return params == base


def _library(check: object, *args: object, **kwargs: object) -> object:
    """Call one of the library's validators; its ValueError becomes a 422."""
    try:
        return check(*args, **kwargs)
    except ValueError as error:
        raise RivalInputError(str(error)) from None


def _check_padding(rest: Sequence[object], defaults: dict[str, object]) -> None:
    """Refuse values after the API dict other than the panel defaults A1111 fills in there."""
    if len(rest) > len(FIELDS) - 1:
        raise RivalInputError(f"expected at most {len(FIELDS)} args, got {len(rest) + 1}")
    for position, (name, value) in enumerate(zip(FIELDS[1:], rest), start=2):
        if not _is_default(value, defaults[name]):
            raise RivalInputError(
                f"args[{position - 1}] ({name}) is {value!r} after the dict of named values: put every "
                f"value in the dict (A1111 fills the positions after it with the panel's defaults)")


def _is_default(value: object, default: object) -> bool:
    if default is None or default == "":
        return value is None or value == ""
    return isinstance(value, (bool, numbers.Real, str)) and value == default


def decode_image(value: object) -> Image.Image:
    """A PIL image from PIL, a numpy array, a gradio dict, or base64 / a data URL (API)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, dict):
        for key in ("image", "composite", "background"):
            if value.get(key) is not None:
                return decode_image(value[key])
        raise RivalInputError("reference_image: the dict holds no image")
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            raw = base64.b64decode(text, validate=True)
            image = Image.open(io.BytesIO(raw))
            image.load()
        except (binascii.Error, ValueError):
            raise RivalInputError("reference_image is not valid base64") from None
        except Image.DecompressionBombError:
            raise RivalInputError("reference_image has too many pixels (over PIL's safety limit)") from None
        except (UnidentifiedImageError, OSError):
            raise RivalInputError("reference_image is not an image file (PNG, JPEG, WebP, ...)") from None
        return image
    raise RivalInputError(f"reference_image must be an image or a base64 string, got {type(value).__name__}")


def _preset_name(value: object) -> str:
    if not isinstance(value, str):
        raise RivalInputError(f"preset must be a string, got {type(value).__name__}")
    name = PRESET_LABELS.get(value, value)
    if name != CUSTOM and name not in PRESETS:
        raise RivalInputError(f"unknown preset {value!r}; known: {', '.join([*PRESETS, CUSTOM])}")
    return name


def _bool(values: dict[str, object], name: str, default: bool) -> bool:
    value = values.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RivalInputError(f"{name} must be true or false, got {value!r}")
    return value


def _choice(value: object, name: str, labels: dict) -> object:
    if isinstance(value, str) and value in labels:
        return labels[value]
    allowed = {e.value for e in labels.values()}
    if isinstance(value, str) and value in allowed:
        return value
    raise RivalInputError(f"{name} must be one of {', '.join(sorted(allowed))}; got {value!r}")

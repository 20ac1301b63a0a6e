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
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..params import PRESETS, STRENGTH_RANGE, ReferencePrompt, RivalParams, number_in, preset
from ..request import MAX_MORE_REFERENCES, ExtraReference, RivalInputError, RivalRequest
from .fields import CUSTOM, FIELDS, MORE_SLOTS, PRESET_LABELS, TABLE, panel_value

T = TypeVar("T")

AMOUNTS = ("attention_strength", "adain_strength", "reference_weight")  # how much, not which application
EXTRA_KEYS = ("image", "weight", "mask")


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
    return parse_named(dict(zip(FIELDS, args)), positional=True)


def parse_named(values: dict[str, object], positional: bool = False) -> RivalRequest:
    """RivalRequest from named values; a preset supplies every parameter that is not given.

    Only types are checked here; RivalParams validates the parameters' values.
    """
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise RivalInputError(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    named: dict[str, Any] = {}  # RivalRequest's fields, each checked below
    changes: dict[str, object] = {}
    for f in TABLE:
        value = values.get(f.name)
        if f.kind in ("image", "references") or (f.kind == "number" and not f.param):
            continue  # the images and the further references' slots: below
        if f.kind == "preset":
            named[f.name] = _preset_name(values.get(f.name, "variation"))
        elif f.param and value is None:
            continue
        elif f.kind == "bool":
            (changes if f.param else named)[f.name] = _bool(values, f.name, f.default is True)
        elif f.kind in ("number", "layers"):
            changes[f.name] = value  # RivalParams checks it (range, layer names)
        elif f.kind == "choice":
            changes[f.name] = _choice(value, f.name, f.labels)
        elif f.kind == "text":
            if not isinstance(value, str):
                raise RivalInputError(f"{f.name} must be a string")
            changes[f.name] = value
    base = RivalParams() if named["preset"] == CUSTOM else preset(named["preset"]).params
    params = _library(base.with_values, **changes)
    if not same_as_preset(params, base):
        named["preset"] = CUSTOM  # the infotext's preset must describe the values used
    enabled = named["enabled"]
    for name in ("reference_image", "mask", "reference_mask"):
        image = values.get(name)
        named[name] = decode_image(image, name) if enabled and image is not None else None
    named["more_references"] = more_references(values) if enabled else ()
    return RivalRequest(params=params, **named)


def more_references(values: dict[str, object]) -> tuple[ExtraReference, ...]:
    """The further references: the API's ``more_references`` list, or the panel's slots 2 to 4."""
    listed = values.get("more_references")
    slots = [(n, values.get(f"reference_{n}"), values.get(f"weight_{n}")) for n in MORE_SLOTS]
    if listed is None:
        return tuple(ExtraReference(decode_image(image, f"reference_{n}"), _weight(f"weight_{n}", weight))
                     for n, image, weight in slots if image is not None)
    if any(image is not None for _, image, _ in slots):
        raise RivalInputError("give the further references either as more_references or in the slots reference_2 "
                              "to reference_4, not both")
    if not isinstance(listed, (list, tuple)):
        raise RivalInputError('more_references must be a list of {"image": base64, "weight": -1..1}, '
                              f"got {type(listed).__name__}")
    if len(listed) > MAX_MORE_REFERENCES:
        raise RivalInputError(f"more_references takes at most {MAX_MORE_REFERENCES} further references, "
                              f"got {len(listed)}")
    out = []
    for i, item in enumerate(listed):
        name = f"more_references[{i}]"
        if not isinstance(item, dict) or item.get("image") is None:
            raise RivalInputError(f'{name} must be {{"image": base64, "weight": -1..1}}, got {item!r:.80}')
        unknown = sorted(set(item) - set(EXTRA_KEYS))
        if unknown:
            raise RivalInputError(f"{name} has unknown key(s) {', '.join(map(repr, unknown))}; known: "
                                  f"{', '.join(EXTRA_KEYS)}")
        mask = item.get("mask")
        out.append(ExtraReference(decode_image(item["image"], f"{name}.image"),
                                  _weight(f"{name}.weight", item.get("weight")),
                                  None if mask is None else decode_image(mask, f"{name}.mask")))
    return tuple(out)


def _weight(name: str, value: object) -> float:
    return 1.0 if value is None else _library(number_in, name, value, STRENGTH_RANGE)


def same_as_preset(params: RivalParams, base: RivalParams) -> bool:
    """Whether ``params`` are the preset's (the custom text counts only when it is the reference text; the
    strengths and the reference weight say how much, not which application, and never count)."""
    amounts = {name: getattr(base, name) for name in AMOUNTS}
    if params.reference_prompt is not ReferencePrompt.CUSTOM:
        amounts["custom_prompt"] = base.custom_prompt
    return params.with_values(**amounts) == base


def _library(check: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call one of the library's validators; its ValueError becomes a 422."""
    try:
        return check(*args, **kwargs)
    except ValueError as error:
        raise RivalInputError(str(error)) from None


def _check_padding(rest: Sequence[object], defaults: dict[str, object]) -> None:
    """Refuse values after the API dict other than the panel defaults A1111 fills in there (the WebUIs hand a
    script exactly its own slots, never more)."""
    for position, (name, value) in enumerate(zip(FIELDS[1:], rest), start=2):
        if not _is_default(value, defaults[name]):
            raise RivalInputError(
                f"args[{position - 1}] ({name}) is {value!r} after the dict of named values: put every "
                f"value in the dict (A1111 fills the positions after it with the panel's defaults)")


def _is_default(value: object, default: object) -> bool:
    if default is None or default == "":
        return value is None or value == ""
    return isinstance(value, (bool, numbers.Real, str)) and value == default


def decode_image(value: object, name: str = "reference_image") -> Image.Image:
    """A PIL image from PIL, a numpy array, a gradio dict, or base64 / a data URL (API); errors name ``name``."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, dict):
        for key in ("image", "composite", "background"):
            if value.get(key) is not None:
                return decode_image(value[key], name)
        raise RivalInputError(f"{name}: the dict holds no image")
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            raw = base64.b64decode(text, validate=True)
            image = Image.open(io.BytesIO(raw))
            image.load()
        except (binascii.Error, ValueError):
            raise RivalInputError(f"{name} is not valid base64") from None
        except Image.DecompressionBombError:
            raise RivalInputError(f"{name} has too many pixels (over PIL's safety limit)") from None
        except (UnidentifiedImageError, OSError):
            raise RivalInputError(f"{name} is not an image file (PNG, JPEG, WebP, ...)") from None
        return image
    raise RivalInputError(f"{name} must be an image or a base64 string, got {type(value).__name__}")


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


def _choice(value: object, name: str, labels: Mapping[str, object]) -> object:
    if isinstance(value, str) and value in labels:
        return labels[value]
    allowed = {e.value for e in labels.values() if isinstance(e, Enum)}  # a choice field's values are enums
    if isinstance(value, str) and value in allowed:
        return value
    raise RivalInputError(f"{name} must be one of {', '.join(sorted(allowed))}; got {value!r}")

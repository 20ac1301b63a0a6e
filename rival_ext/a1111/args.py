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
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..params import PRESETS, InitLatent, ReferencePrompt, RivalParams, SwitchRule, preset

CUSTOM = "custom"

# Positional order of the panel's controls (append only).
FIELDS = (
    "enabled",
    "reference_image",
    "use_init_image",
    "preset",
    "t_align",
    "t_early",
    "early_plain",
    "reference_prompt",
    "custom_prompt",
    "init_latent",
    "apply_to_hires",
    "switch_rule",
    "adain",
    "show_reconstruction",
)

REFERENCE_PROMPT_LABELS = {
    "empty (null prompt)": ReferencePrompt.NULL,
    "same as the prompt": ReferencePrompt.PROMPT,
    "custom text": ReferencePrompt.CUSTOM,
}
INIT_LATENT_LABELS = {
    "shuffled inverted latent": InitLatent.SHUFFLED,
    "inverted latent (editing)": InitLatent.INVERTED,
    "seed noise": InitLatent.NOISE,
}
SWITCH_RULE_LABELS = {
    "official (t - 1 <= t_align)": SwitchRule.OFFICIAL,
    "paper (t <= t_align)": SwitchRule.PAPER,
}
PRESET_LABELS = {p.title: name for name, p in PRESETS.items()} | {"Custom": CUSTOM}


class RivalInputError(ValueError):
    """Bad panel or API input: A1111's API answers 422 with the message as ``detail``.

    A1111's ``handle_exception`` reads ``vars(e)``, so the status must be an instance attribute.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"RIVAL: {message}")
        self.status_code = 422
        self.detail = str(self)


@dataclass(frozen=True)
class RivalArgs:
    """What one generation asked of RIVAL."""

    enabled: bool = False
    reference_image: Image.Image | None = None
    use_init_image: bool = False
    preset: str = "variation"
    params: RivalParams = field(default_factory=RivalParams)
    apply_to_hires: bool = False
    show_reconstruction: bool = False


def panel_defaults(preset_name: str) -> dict[str, object]:
    """The value each panel control starts with (what A1111's API pads script args with)."""
    base = preset(preset_name if preset_name in PRESETS else "variation")
    p = base.params
    return {
        "enabled": False,
        "reference_image": None,
        "use_init_image": False,
        "preset": base.title,
        "t_align": p.t_align,
        "t_early": p.t_early,
        "early_plain": p.early_plain,
        "reference_prompt": label_of(REFERENCE_PROMPT_LABELS, p.reference_prompt),
        "custom_prompt": "",
        "init_latent": label_of(INIT_LATENT_LABELS, p.init_latent),
        "apply_to_hires": False,
        "switch_rule": label_of(SWITCH_RULE_LABELS, SwitchRule.OFFICIAL),
        "adain": True,
        "show_reconstruction": False,
    }


def label_of(labels: dict, value: object) -> str:
    """The panel label of an enum value."""
    return next(label for label, v in labels.items() if v == value)


def parse_args(args: Sequence[object], default_preset: str = "variation") -> RivalArgs:
    """RivalArgs from the script's args: the positional UI values, or a dict from the API.

    A dict may be followed by the panel's defaults for ``default_preset`` (A1111's API padding).
    """
    if len(args) >= 1 and isinstance(args[0], dict):
        _check_padding(args[1:], panel_defaults(default_preset))
        return parse_named(args[0])
    if len(args) > len(FIELDS):
        raise RivalInputError(f"expected at most {len(FIELDS)} positional values, got {len(args)}")
    return parse_named(dict(zip(FIELDS, args)), positional=True)


def parse_named(values: dict[str, object], positional: bool = False) -> RivalArgs:
    """RivalArgs from named values; a preset supplies every parameter that is not given."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise RivalInputError(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    enabled = _bool(values, "enabled", False)
    preset_name = _preset_name(values.get("preset", "variation"))
    base = RivalParams() if preset_name == CUSTOM else preset(preset_name).params
    changes: dict[str, object] = {}
    for name in ("t_align", "t_early", "early_plain"):
        if values.get(name) is not None:
            changes[name] = _number(values[name], name)
    for name, labels in (
        ("reference_prompt", REFERENCE_PROMPT_LABELS),
        ("init_latent", INIT_LATENT_LABELS),
        ("switch_rule", SWITCH_RULE_LABELS),
    ):
        if values.get(name) is not None:
            changes[name] = _choice(values[name], name, labels)
    if values.get("custom_prompt") is not None:
        if not isinstance(values["custom_prompt"], str):
            raise RivalInputError("custom_prompt must be a string")
        changes["custom_prompt"] = values["custom_prompt"]
    if values.get("adain") is not None:
        changes["adain"] = _bool(values, "adain", True)
    try:
        params = base.with_values(**changes)
    except ValueError as error:
        raise RivalInputError(str(error)) from None
    image = values.get("reference_image")
    return RivalArgs(
        enabled=enabled,
        reference_image=decode_image(image) if enabled and image is not None else None,
        use_init_image=_bool(values, "use_init_image", False),
        preset=preset_name,
        params=params,
        apply_to_hires=_bool(values, "apply_to_hires", False),
        show_reconstruction=_bool(values, "show_reconstruction", False),
    )


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


def _number(value: object, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise RivalInputError(f"{name} must be a number in [0, 1000], got {value!r}")
    if not math.isfinite(value):
        raise RivalInputError(f"{name} must be a finite number in [0, 1000], got {value!r}")
    return float(value)


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

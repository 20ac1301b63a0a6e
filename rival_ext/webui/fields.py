"""The one table of RIVAL's panel and API fields.

Parsing (args), the panel (ui), the infotext and its paste-back (infotext, ui), the X/Y/Z axes
(xyz) and the browser tooltips (javascript/rival_titles.js, generated) are all derived from it, so
that adding a field means: a row here, the code that uses the value, and the README.
The row order is the positional order of the panel's values: append only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from PIL import Image

from ..image import pixel_hash
from ..params import (
    ADAIN_STRENGTH_RANGE,
    PRESETS,
    STRENGTH_RANGE,
    TIMESTEP_MAX,
    InitLatent,
    Preset,
    ReferencePrompt,
    RivalParams,
    SwitchRule,
)
from ..request import RivalRequest

CUSTOM = "custom"
PRESET_KEY = "RIVAL"
REFERENCE_KEY = "RIVAL reference"
TITLES_JS = "javascript/rival_titles.js"


class _Marker:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


FROM_PRESET = _Marker("from preset")  # default: the preset's value; the panel refills it when the preset changes
PRESET_TITLE = _Marker("the default preset's title")  # default of the preset field itself (Settings)
KEEP = _Marker("keep")  # a paste-back reader's answer for "leave the control as it is"


@dataclass(frozen=True)
class Field:
    """One panel control / API value.

    ``choices`` maps panel labels to API values; ``info`` says whether the panel shows ``hint`` as
    the grey line under the control (it is always the hover tooltip). ``write`` gives the infotext
    value (None: not written) and ``read`` the pasted-back panel value (None: A1111 pastes the
    key's text itself; KEEP: leave the control).
    """

    name: str
    kind: str  # bool | image | preset | number | choice | text | layers | references
    label: str
    hint: str
    default: object = FROM_PRESET
    range: tuple[float, float] | None = None
    choices: Mapping[str, object] | None = None
    info: bool = False
    key: str | None = None
    write: Callable[[RivalRequest], object] | None = None
    read: Callable[[dict[str, Any]], object] | None = None
    # X/Y/Z: the axis label, the type A1111 converts a cell's text to, what makes the panel value of that, choices
    axis: tuple[str, type, Callable[[Any], object], Callable[[], list[str]] | None] | None = None

    @property
    def param(self) -> bool:
        """Whether the value belongs to RivalParams (the library validates it)."""
        return self.name in _PARAM_NAMES

    @property
    def labels(self) -> Mapping[str, object]:
        """``choices`` of a field that offers some (a choice, the preset, the layers)."""
        if self.choices is None:
            raise ValueError(f"the field {self.name} offers no choices")
        return self.choices


_PARAM_NAMES = frozenset(f.name for f in fields(RivalParams))


def bool_text(value: object) -> bool:
    """An X/Y/Z cell's text as a bool."""
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def label_of(labels: Mapping[str, object], value: object) -> str:
    """The panel label of an enum value."""
    return next(label for label, v in labels.items() if v == value)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _choice_reader(key: str, labels: Mapping[str, object], enum: type[Enum],
                   missing: str | None = None) -> Callable[[dict[str, Any]], object]:
    def read(d: dict[str, Any]) -> object:
        try:
            return label_of(labels, enum(d.get(key, missing)))
        except (ValueError, StopIteration):
            return KEEP

    return read


def _preset_title(d: dict[str, Any]) -> object:
    name = d.get(PRESET_KEY)
    if name is None:
        return KEEP
    return PRESETS[name].title if name in PRESETS else "Custom"


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
TIMESTEPS = (0.0, TIMESTEP_MAX)

def _amount(key: str) -> Callable[[dict[str, Any]], object]:
    """Paste-back of a strength or weight: its value, 1 where the infotext has none (written only when not 1)."""
    def read(d: dict[str, Any]) -> object:
        try:
            return float(d.get(key, 1.0))
        except (TypeError, ValueError):
            return KEEP

    return read


def _written_amount(value: float) -> object:
    return None if value == 1.0 else _number(value)


def _extra_slots(a: RivalRequest) -> object:
    if not a.more_references:
        return None
    return ", ".join(f"{pixel_hash(r.image)}:{_number(r.weight)}" for r in a.more_references)


def _hash_of(image: Image.Image | None) -> object:
    return None if image is None else pixel_hash(image)


def _keep(_d: dict[str, Any]) -> object:
    """Paste-back of an image: the infotext records it by hash only; re-add it yourself."""
    return KEEP


MORE_SLOTS = (2, 3, 4)  # the panel's further reference slots (the API's more_references, in order)
TABLE: tuple[Field, ...] = (
    Field(
        "enabled", "bool", "RIVAL",
        "Generate images that share the content and style of one reference image (RIVAL, NeurIPS 2023).",
        default=False, read=lambda d: PRESET_KEY in d,
        axis=("[RIVAL] Enabled", str, bool_text, lambda: ["True", "False"]),
    ),
    Field(
        "reference_image", "image", "Reference image",
        "The real image whose content and style the generation follows. Any size; it is centre-cropped "
        "to your aspect ratio.",
        default=None,
    ),
    Field(
        "use_init_image", "bool", "Use the init image as reference",
        "Use img2img's input image as the reference instead of the upload.",
        default=False,
    ),
    Field(
        "preset", "preset", "Application",
        "An application of the paper; it fills the controls below with the official values.",
        default=PRESET_TITLE, choices=PRESET_LABELS, info=True,
        key=PRESET_KEY, write=lambda a: a.preset, read=_preset_title,
        axis=("[RIVAL] Preset", str, str, lambda: list(PRESETS)),
    ),
    Field(
        "t_align", "number", "t_align (attention switch)",
        "Self-attention reads only the reference above this timestep, the reference and itself "
        "below. Lower = closer to the reference's content (official 600).",
        range=TIMESTEPS, info=True, key="RIVAL t_align", write=lambda a: _number(a.params.t_align),
        axis=("[RIVAL] t_align", float, float, None),
    ),
    Field(
        "t_early", "number", "t_early (normalization until)",
        "Noise statistics follow the reference above this timestep. Lower = closer to the "
        "reference's colours (official 600; 400 with ControlNet).",
        range=TIMESTEPS, info=True, key="RIVAL t_early", write=lambda a: _number(a.params.t_early),
        axis=("[RIVAL] t_early", float, float, None),
    ),
    Field(
        "early_plain", "number", "Early plain steps above",
        "Above this timestep self-attention is left alone, letting the prompt set the layout "
        "first (1000 = never; 960 style transfer, 900 editing).",
        range=TIMESTEPS, info=True, key="RIVAL early plain", write=lambda a: _number(a.params.early_plain),
        axis=("[RIVAL] Early plain", float, float, None),
    ),
    Field(
        "reference_prompt", "choice", "Reference prompt",
        "Text of the reference branch (inversion and attention): empty for style "
        "transfer and editing, the prompt for variations.",
        choices=REFERENCE_PROMPT_LABELS, info=True,
        key="RIVAL reference prompt", write=lambda a: a.params.reference_prompt.value,
        read=_choice_reader("RIVAL reference prompt", REFERENCE_PROMPT_LABELS, ReferencePrompt),
    ),
    Field(
        "custom_prompt", "text", "Custom reference prompt",
        "Reference text when 'custom text' is chosen.",
        default="", info=True, key="RIVAL custom prompt",
        write=lambda a: a.params.custom_prompt if a.params.reference_prompt is ReferencePrompt.CUSTOM else None,
    ),
    Field(
        "init_latent", "choice", "Initial latent",
        "Start from a seeded shuffle of the inverted reference (variations), from the "
        "inverted reference itself (editing), or from ordinary seed noise.",
        choices=INIT_LATENT_LABELS, info=True,
        key="RIVAL init", write=lambda a: a.params.init_latent.value,
        read=_choice_reader("RIVAL init", INIT_LATENT_LABELS, InitLatent),
    ),
    Field(
        "apply_to_hires", "bool", "Apply to the hires pass",
        "Invert the reference again at the hires size and keep RIVAL on in the second pass.",
        default=False, key="RIVAL hires", write=lambda a: True if a.apply_to_hires else None,
        read=lambda d: str(d.get("RIVAL hires", "False")).lower() == "true",
    ),
    Field(
        "switch_rule", "choice", "Attention switch rule",
        "When attention switches to [reference, own]: the official code's rule or the paper's.",
        default=SwitchRule.OFFICIAL, choices=SWITCH_RULE_LABELS, info=True,
        key="RIVAL switch rule",
        write=lambda a: a.params.switch_rule.value if a.params.switch_rule is not SwitchRule.OFFICIAL else None,
        read=_choice_reader("RIVAL switch rule", SWITCH_RULE_LABELS, SwitchRule, "official"),
    ),
    Field(
        "adain", "bool", "Step-wise normalization (AdaIN)",
        "Normalize the generated noise prediction to the reference's while t > t_early.",
        default=True, key="RIVAL AdaIN", write=lambda a: None if a.params.adain else False,
        read=lambda d: str(d.get("RIVAL AdaIN", "True")).lower() != "false",
    ),
    Field(
        "show_reconstruction", "bool", "Add the inversion reconstruction to the gallery",
        "Add the reference, inverted and sampled back, to the gallery: shows how "
        "faithful the inversion is for this model and sampler.",
        default=False,
    ),
    Field(
        "official_settings", "bool", "Official CFG, steps and sampler",
        "Also sample with the paper's settings for the preset: its CFG scale (5 for variations, 7 "
        "otherwise), 50 steps and the DDIM sampler.",
        default=False,
    ),
    Field(
        "attention_strength", "number", "Attention strength",
        "How much the reference's attention replaces the image's own: 1 the paper's RIVAL, 0 the image's own "
        "attention, below 0 away from the reference (more diverse).",
        default=1.0, range=STRENGTH_RANGE, info=True, key="RIVAL attention strength",
        write=lambda a: _written_amount(a.params.attention_strength), read=_amount("RIVAL attention strength"),
        axis=("[RIVAL] Attention strength", float, float, None),
    ),
    Field(
        "adain_strength", "number", "AdaIN strength",
        "How much the noise statistics follow the reference's (step-wise normalization): 1 fully, 0 not at all.",
        default=1.0, range=ADAIN_STRENGTH_RANGE, info=True, key="RIVAL AdaIN strength",
        write=lambda a: _written_amount(a.params.adain_strength), read=_amount("RIVAL AdaIN strength"),
        axis=("[RIVAL] AdaIN strength", float, float, None),
    ),
    Field(
        "layers", "layers", "Layers",
        "Which self-attention layers follow the reference: all, style (look only), layout (composition only), or "
        "block names such as input.8, middle.0, output.1.2 (see README).",
        choices={"all": "all", "style": "style", "layout": "layout"}, info=True, key="RIVAL layers",
        write=lambda a: None if a.params.layers == "all" else a.params.layers,
        read=lambda d: d.get("RIVAL layers", "all"),
        axis=("[RIVAL] Layers", str, str, lambda: ["all", "style", "layout"]),
    ),
    Field(
        "reference_weight", "number", "Reference weight",
        "The reference's weight among several references (-1 to 1; 0 leaves it out, below 0 pushes away from it).",
        default=1.0, range=STRENGTH_RANGE, key="RIVAL reference weight",
        write=lambda a: _written_amount(a.params.reference_weight), read=_amount("RIVAL reference weight"),
    ),
    *(field for n in MORE_SLOTS for field in (
        Field(f"reference_{n}", "image", f"Reference {n}", f"A further reference image (slot {n}).", default=None),
        Field(f"weight_{n}", "number", f"Weight of reference {n}",
              f"Reference {n}'s weight (-1 to 1; 0 leaves it out, below 0 pushes away from it).",
              default=1.0, range=STRENGTH_RANGE),
    )),
    Field(
        "mask", "image", "Where RIVAL acts",
        "A mask over the generated image: white follows the reference, black keeps the model's own attention "
        "and statistics, grey in between. Empty: everywhere.",
        default=None, key="RIVAL mask", write=lambda a: _hash_of(a.mask), read=_keep,
    ),
    Field(
        "reference_mask", "image", "Part of the reference",
        "A mask over the reference: only its white part gives keys, values and statistics. Empty: all of it.",
        default=None, key="RIVAL reference mask", write=lambda a: _hash_of(a.reference_mask), read=_keep,
    ),
    Field(
        "more_references", "references", "More references",
        "API: up to 3 further references, [{\"image\": base64, \"weight\": -1..1, \"mask\": base64 (optional)}].",
        default=None, key="RIVAL references", write=_extra_slots, read=_keep,
    ),
)


FIELD: dict[str, Field] = {f.name: f for f in TABLE}
FIELDS: tuple[str, ...] = tuple(FIELD)
# The controls the panel refills when the preset changes.
PRESET_OUTPUTS: tuple[str, ...] = tuple(f.name for f in TABLE if f.default is FROM_PRESET)
# Tooltips of the panel's controls that are not fields.
EXTRA_TITLES = {
    "Use the selected result": "Use the image selected in the gallery as the RIVAL reference.",
    "Use the official CFG, steps and sampler": "Set this tab's CFG scale, steps and sampler to the paper's "
    "settings for the chosen preset (5 or 7, 50 steps, DDIM).",
}
BUTTONS = {"use_result": "Use the selected result", "use_official": "Use the official CFG, steps and sampler"}


def titled_by_id() -> dict[str, str]:
    """Element-id suffix -> ``titles`` key of the controls hints.js cannot match by their text (an image's label is
    a DIV, a button's text carries a leading space): rival.js gives them their tooltip."""
    return {f.name: f.label for f in TABLE if f.kind == "image"} | BUTTONS


def panel_value(f: Field, base: Preset) -> object:
    """The value the panel shows for ``f`` when ``base`` is the preset."""
    value: object
    if f.default is PRESET_TITLE:
        value = base.title
    elif f.default is FROM_PRESET:
        value = getattr(base.params, f.name)
    else:
        value = f.default
    if f.kind == "choice":
        return label_of(f.labels, value)
    return value


def titles() -> dict[str, str]:
    """Panel label -> hover tooltip, as A1111's hints.js reads them from the global ``titles``."""
    return {f.label: f.hint for f in TABLE} | EXTRA_TITLES


def titles_js() -> str:
    """The text of ``TITLES_JS`` (tests check the committed file equals it)."""
    return (
        "// Generated from rival_ext/webui/fields.py by `python -m rival_ext.webui.fields`: edit the table there.\n"
        "// A1111's hints.js turns the global `titles` map (label text -> tooltip) into hover tooltips.\n"
        "(function rivalTitles() {\n"
        "    if (typeof titles === \"undefined\") {\n"
        "        window.titles = {};\n"
        "    }\n"
        f"    Object.assign(titles, {json.dumps(titles(), indent=8, ensure_ascii=False)[:-1]}    }});\n"
        "    // element-id suffix -> titles key, for the controls hints.js cannot match (rival.js)\n"
        f"    window.rivalTitledById = {json.dumps(titled_by_id(), indent=8, ensure_ascii=False)[:-1]}    }};\n"
        "})();\n"
    )


if __name__ == "__main__":
    from pathlib import Path

    Path(__file__).resolve().parents[2].joinpath(TITLES_JS).write_text(titles_js(), encoding="utf-8")

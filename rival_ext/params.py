"""RIVAL parameters, their validation, and the official presets.

All thresholds are in the official timestep units 0..1000 (the DDPM training timestep of the
model evaluation), never in sampler steps: A1111 samplers visit arbitrary noise levels, and the
timestep is what every sampler shares.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

import numpy as np

from .layers import layer_choice


class ReferencePrompt(str, Enum):
    """Text of the reference branch: used for the inversion and for the reference-cond row."""

    NULL = "null"  # "" (the official null-prompt setting)
    PROMPT = "prompt"  # the generation prompt (official variation setting)
    CUSTOM = "custom"  # a text of the user's


class InitLatent(str, Enum):
    """Where the generated branch starts."""

    SHUFFLED = "shuffled"  # seeded spatial permutation of the inverted latent (official default)
    INVERTED = "inverted"  # the inverted latent itself (official editing)
    NOISE = "noise"  # ordinary seed noise (the sampler's own)


class SwitchRule(str, Enum):
    """When self-attention switches from reference-only to [reference, own]."""

    OFFICIAL = "official"  # the official code's counter: concat once t - 1 <= t_align
    PAPER = "paper"  # the paper's text: concat once t <= t_align


class AttentionMode(str, Enum):
    """What a generated row's self-attention reads at one model evaluation."""

    PLAIN = "plain"  # its own keys/values (no injection)
    REFERENCE = "reference"  # the reference row's keys/values only
    CONCAT = "concat"  # [reference, own] keys/values


TIMESTEP_MAX = 1000.0
STRENGTH_RANGE = (-1.0, 1.0)  # attention strength and reference weights: below 0 away from the reference
ADAIN_STRENGTH_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class RivalParams:
    """Everything that steers RIVAL; defaults are the official image-variation values."""

    t_align: float = 600.0
    t_early: float = 600.0
    early_plain: float = 1000.0
    reference_prompt: ReferencePrompt = ReferencePrompt.NULL
    custom_prompt: str = ""
    init_latent: InitLatent = InitLatent.SHUFFLED
    switch_rule: SwitchRule = SwitchRule.OFFICIAL
    adain: bool = True
    attention_strength: float = 1.0  # 0: own attention, 1: RIVAL's injected attention, below 0: away from it
    adain_strength: float = 1.0  # 0: no normalization, 1: the official AdaIN
    reference_weight: float = 1.0  # the first reference's weight among several (-1 .. 1; 0: absent)
    layers: str = "all"  # all | style | layout | comma-separated self-attention block names (rival_ext.layers)

    def __post_init__(self) -> None:
        for name in ("t_align", "t_early", "early_plain"):
            object.__setattr__(self, name, timestep_value(name, getattr(self, name)))
        for name, bounds in (("attention_strength", STRENGTH_RANGE), ("adain_strength", ADAIN_STRENGTH_RANGE),
                             ("reference_weight", STRENGTH_RANGE)):
            object.__setattr__(self, name, number_in(name, getattr(self, name), bounds))
        object.__setattr__(self, "layers", layer_choice(self.layers))
        for name, enum in (
            ("reference_prompt", ReferencePrompt),
            ("init_latent", InitLatent),
            ("switch_rule", SwitchRule),
        ):
            object.__setattr__(self, name, _as_enum(name, getattr(self, name), enum))
        if not isinstance(self.adain, bool):
            raise ValueError(f"adain must be true or false, got {self.adain!r}")
        if not isinstance(self.custom_prompt, str):
            raise ValueError(f"custom_prompt must be a string, got {type(self.custom_prompt).__name__}")

    def attention_mode(self, t: float) -> AttentionMode:
        """Self-attention mode at timestep ``t`` (decided by the evaluation's t, never a counter); plain at any t
        with attention strength 0 (RIVAL's attention injection off)."""
        if self.attention_strength == 0.0:
            return AttentionMode.PLAIN
        u = _snap(t) - (1.0 if self.switch_rule is SwitchRule.OFFICIAL else 0.0)
        if u > self.early_plain:
            return AttentionMode.PLAIN
        if u > self.t_align:
            return AttentionMode.REFERENCE
        return AttentionMode.CONCAT

    def adain_active(self, t: float) -> bool:
        """Step-wise normalization runs while t > t_early (strict, as the official code), at a strength above 0."""
        return self.adain and self.adain_strength > 0.0 and _snap(t) > self.t_early

    def reference_text(self, prompt: str) -> str:
        """Text of the reference-cond row and of the inversion for a given generation prompt."""
        if self.reference_prompt is ReferencePrompt.PROMPT:
            return prompt
        if self.reference_prompt is ReferencePrompt.CUSTOM:
            return self.custom_prompt
        return ""

    def with_values(self, **changes: object) -> RivalParams:
        """A validated copy with some fields changed; unknown names raise ValueError."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown RIVAL parameter(s): {', '.join(unknown)}")
        values: dict[str, Any] = dict(changes)  # of any type: __post_init__ validates them
        return replace(self, **values)


def timestep_value(name: str, value: object) -> float:
    """A threshold as a float in [0, 1000]; the one place that checks them (the API delegates here)."""
    return number_in(name, value, (0.0, TIMESTEP_MAX))


def number_in(name: str, value: object, bounds: tuple[float, float]) -> float:
    """A number in [low, high] as a float; the one check of every numeric parameter (the API delegates here)."""
    low, high = bounds
    interval = f"[{_number_text(low)}, {_number_text(high)}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    if value < low or not value <= high:  # not low <= value <= high (numbers.Real has < and <=)
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _as_enum(name: str, value: object, enum: type[Enum]) -> Enum:
    if isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}") from None


def _snap(t: float) -> float:
    """Round t to the nearest integer when float noise put it a hair off one (grid timesteps)."""
    t = float(t)
    nearest = round(t)
    return float(nearest) if abs(t - nearest) < 1e-4 else t


@dataclass(frozen=True)
class Preset:
    """An application of the paper with the official configuration values."""

    name: str
    title: str
    params: RivalParams
    cfg_scale: float  # the official configuration's guidance scale (documentation; A1111's own CFG applies)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # Variations of the reference: same content and style, new layout (rival_variation.json).
        Preset("variation", "Variation", RivalParams(reference_prompt=ReferencePrompt.PROMPT), 5.0),
        # Your prompt, in the reference's style and colours (rival_t2i.json, early plain 960).
        Preset("prompt_guided", "Prompt-guided (style transfer)", RivalParams(early_plain=960.0), 7.0),
        # Edit the reference with the prompt; starts from its inverted latent (early plain 900).
        Preset("editing", "Editing", RivalParams(early_plain=900.0, init_latent=InitLatent.INVERTED), 7.0),
        # With a LoRA/DreamBooth concept in the prompt (rival_t2i.json with early plain 1000).
        Preset("concept", "Customized concept", RivalParams(), 7.0),
        # Example-based inpainting in img2img's inpaint tab (rival_inpainting.json).
        Preset("inpainting", "Inpainting", RivalParams(), 7.0),
        # Structure from ControlNet, look from the reference (rival_controlnet.json, t_early 400).
        Preset("controlnet", "With ControlNet", RivalParams(t_early=400.0), 7.0),
        # Your prompt in the reference's style only: prompt-guided, injected into the style layers alone.
        Preset("style_only", "Style only", RivalParams(early_plain=960.0, layers="style"), 7.0),
    )
}


def preset(name: str) -> Preset:
    """The preset of that name; an unknown name raises ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown RIVAL preset {name!r}; known: {', '.join(PRESETS)}") from None

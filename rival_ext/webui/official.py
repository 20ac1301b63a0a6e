"""The paper's sampling settings for a preset: its CFG scale, 50 steps and A1111's DDIM sampler.

The official results come from 50 DDIM steps (diffusers' DDIMScheduler, which A1111's ``DDIM``
sampler matches) at the configuration's guidance scale: 5 for variations, 7 otherwise.
"""

from __future__ import annotations

from ..params import PRESETS

STEPS = 50
SAMPLER = "DDIM"
SCHEDULER = "Automatic"
CFG_SCALE = 7.0  # the official configurations' guidance scale, for the Custom preset


def official_settings(preset_name: str) -> dict[str, object]:
    """``p`` attributes (steps, cfg_scale, sampler_name, scheduler) of the official setup of the preset."""
    cfg = PRESETS[preset_name].cfg_scale if preset_name in PRESETS else CFG_SCALE
    return {"steps": STEPS, "cfg_scale": cfg, "sampler_name": SAMPLER, "scheduler": SCHEDULER}


def apply_official_settings(p: object, preset_name: str) -> None:
    """Set the official sampling settings on the generation (A1111 reads them after ``process``)."""
    for name, value in official_settings(preset_name).items():
        setattr(p, name, value)

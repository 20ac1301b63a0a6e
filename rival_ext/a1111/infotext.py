"""RIVAL's entries in the generation parameters (infotext), and reading them back."""

from __future__ import annotations

from ..params import RivalParams
from .args import RivalArgs

KEYS = {
    "preset": "RIVAL",
    "t_align": "RIVAL t_align",
    "t_early": "RIVAL t_early",
    "early_plain": "RIVAL early plain",
    "reference_prompt": "RIVAL reference prompt",
    "custom_prompt": "RIVAL custom prompt",
    "init_latent": "RIVAL init",
    "switch_rule": "RIVAL switch rule",
    "adain": "RIVAL AdaIN",
    "apply_to_hires": "RIVAL hires",
    "reference": "RIVAL reference",
}


def generation_params(args: RivalArgs, image_hash: str) -> dict[str, object]:
    """Infotext entries for a generation; the reference is recorded by a short hash only."""
    p: RivalParams = args.params
    out: dict[str, object] = {
        KEYS["preset"]: args.preset,
        KEYS["t_align"]: _number(p.t_align),
        KEYS["t_early"]: _number(p.t_early),
        KEYS["early_plain"]: _number(p.early_plain),
        KEYS["reference_prompt"]: p.reference_prompt.value,
        KEYS["init_latent"]: p.init_latent.value,
        KEYS["reference"]: image_hash,
    }
    if p.reference_prompt.value == "custom":
        out[KEYS["custom_prompt"]] = p.custom_prompt
    if p.switch_rule.value != "official":
        out[KEYS["switch_rule"]] = p.switch_rule.value
    if not p.adain:
        out[KEYS["adain"]] = False
    if args.apply_to_hires:
        out[KEYS["apply_to_hires"]] = True
    return out


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


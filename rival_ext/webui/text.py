"""Text rows as every WebUI of the family encodes them: ``get_learned_conditioning`` with the prompt's size.

``SdConditioning`` carries the width, height and negative flag SDXL's conditioner needs (size ids, an
all-empty negative zeroed); textual inversion, emphasis and the loaded networks apply as for the
generated image, so the reference branch sees the same text encoder.
"""

from __future__ import annotations

import torch

from ..conditioning import Conditioning
from .objects import ConditioningModel


@torch.no_grad()
def encode_text(sd_model: ConditioningModel, text: str, negative: bool, width: int, height: int) -> Conditioning:
    """One conditioning row for ``text`` (SDXL: with its pooled vector and size ids)."""
    from modules import devices

    try:
        from modules.prompt_parser import SdConditioning

        prompts = SdConditioning([text], is_negative_prompt=negative, width=width, height=height)
    except ImportError:
        prompts = [text]
    with devices.autocast():
        encoded = sd_model.get_learned_conditioning(prompts)
    if isinstance(encoded, dict):  # SDXL; clones: Forge encodes under inference_mode
        return Conditioning(encoded["crossattn"].float().clone(), encoded["vector"].float().clone())
    return Conditioning(encoded.float().clone())

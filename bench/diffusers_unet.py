"""A diffusers ``UNet2DConditionModel`` seen as an ldm/sgm-style UNet: ``forward(x, timesteps, context, y)``.

The SDXL benchmark needs the SDXL-base architecture, and sgm (Stability's code, which A1111 uses)
is not on PyPI; diffusers' UNet has the same layers. Wrapping it with ldm's calling convention
lets the library's hooks apply unchanged: the row hook binds the wrapper's x/timesteps/context/y,
and the attention injector finds the inner diffusers ``attn1`` modules by structure.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

TIME_IDS = 6  # (original h, original w, crop top, crop left, target h, target w)

SDXL_BASE: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 1280 pooled text + 6 time ids x 256
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
}
"""The SDXL-base UNet (2.57 B parameters), as in its diffusers ``unet/config.json``."""

SDXL_TINY: dict[str, Any] = {
    **SDXL_BASE,
    "sample_size": 8,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 1),
    "attention_head_dim": (2, 4),
    "cross_attention_dim": 32,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + TIME_IDS * 8,
    "norm_num_groups": 8,
}
"""The same block types at toy width, for the smoke run (pooled text dim 32)."""


def pooled_dim(config: dict[str, Any]) -> int:
    """Width of the pooled text embedding the config expects (the rest of the added embedding is time ids)."""
    return config["projection_class_embeddings_input_dim"] - TIME_IDS * config["addition_time_embed_dim"]


class DiffusersUNet(nn.Module):
    """ldm calling convention over a diffusers UNet; ``y`` = cat(pooled text, 6 time ids) per row."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, timesteps: Tensor | None = None, context: Tensor | None = None,
                y: Tensor | None = None) -> Tensor:
        if timesteps is None or context is None or y is None:
            raise ValueError("the SDXL UNet needs timesteps, context and y")
        added = {"text_embeds": y[:, :-TIME_IDS], "time_ids": y[:, -TIME_IDS:]}
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        return self.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0]


def build_sdxl_unet(config: dict[str, Any]) -> DiffusersUNet:
    """The wrapped diffusers UNet with the given config; parameters are left for the caller to fill."""
    from diffusers import UNet2DConditionModel

    return DiffusersUNet(UNet2DConditionModel(**config))

"""Forge: backend/nn/unet.py ``IntegratedUNet2DConditionModel.forward`` and ``BasicTransformerBlock._forward``,
over the tiny real ldm UNet of the tests (same modules and weights; only the forward is Forge's).

Relied on (Forge's, read from the source): ``transformer_options["block"]`` is ("input"|"middle"|"output", id)
while a block runs and ``block_index`` the transformer block inside its SpatialTransformer; the attn1 patches run
on the normed hidden states before the projections, each ``(n, context, value, extra_options) -> (n, context,
value)``, with ``context = value = n`` to start; an attn1 *replace* patch for (block, id, index) or (block, id)
gets the projected q, k, v and replaces the attention (the projections are the block's), otherwise attn1 runs
with the (patched) context and value; ``attn1_output_patch`` gets the attention's output; ControlNet residuals are
added after each input block, the middle block and to each skip connection (a shape mismatch only prints a
warning); ``extra_options`` carries every transformer option except the patches, plus ``n_heads``/``dim_head``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from ldm.modules import attention as ldm_attention
from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import TimestepBlock, UNetModel
from ldm.modules.diffusionmodules.util import timestep_embedding


class CrossAttention(ldm_attention.CrossAttention):
    """Forge: backend/nn/unet.py CrossAttention.forward(x, context=None, value=None, mask=None, transformer_options={}):
    keys from ``context``, values from ``value`` (else from ``context``); the tests swap an ldm attn1's class to it."""

    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):  # noqa: B006 (Forge's)
        context = x if context is None else context
        value = context if value is None else value
        return self.to_out(attention_projected(self, self.to_q(x), self.to_k(context), self.to_v(value)))


def attention_projected(attn, q, k, v):
    h = attn.heads
    q, k, v = (rearrange(t, 'b n (h d) -> (b h) n d', h=h) for t in (q, k, v))
    sim = torch.einsum('b i d, b j d -> b i j', q, k) * attn.scale
    out = torch.einsum('b i j, b j d -> b i d', sim.softmax(dim=-1), v)
    return rearrange(out, '(b h) n d -> b n (h d)', h=h)


def block_forward(block, x, context, transformer_options):
    """Forge: BasicTransformerBlock._forward (ff_in and checkpointing left out)."""
    extra_options = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
    patches = transformer_options.get("patches", {})
    replace = transformer_options.get("patches_replace", {})
    extra_options["n_heads"] = block.attn1.heads
    extra_options["dim_head"] = block.attn1.to_q.out_features // block.attn1.heads
    n = block.norm1(x)
    context_attn1 = context if block.disable_self_attn else None
    value_attn1 = None
    if "attn1_patch" in patches:
        if context_attn1 is None:
            context_attn1 = n
        value_attn1 = context_attn1
        for p in patches["attn1_patch"]:
            n, context_attn1, value_attn1 = p(n, context_attn1, value_attn1, extra_options)
    block_id = transformer_options.get("block")
    transformer_block = (block_id[0], block_id[1], transformer_options.get("block_index", 0)) if block_id else None
    attn1_replace = replace.get("attn1", {})
    key = transformer_block if transformer_block in attn1_replace else block_id
    if key in attn1_replace:
        if context_attn1 is None:
            context_attn1 = value_attn1 = n
        q, k, v = block.attn1.to_q(n), block.attn1.to_k(context_attn1), block.attn1.to_v(value_attn1)
        n = block.attn1.to_out(attn1_replace[key](q, k, v, extra_options))
    else:
        n = block.attn1(n, context=context_attn1, value=value_attn1, transformer_options=extra_options)
    for p in patches.get("attn1_output_patch", []):
        n = p(n, extra_options)
    x = x + n
    x = block.attn2(block.norm2(x), context=context) + x
    return block.ff(block.norm3(x)) + x


def spatial_forward(st, x, context, transformer_options):
    """ldm's SpatialTransformer.forward with Forge's block forward and ``block_index``."""
    contexts = context if isinstance(context, list) else [context] * len(st.transformer_blocks)
    h, w = x.shape[-2:]
    x_in = x
    x = st.norm(x)
    if not st.use_linear:
        x = st.proj_in(x)
    x = rearrange(x, 'b c h w -> b (h w) c').contiguous()
    if st.use_linear:
        x = st.proj_in(x)
    for i, block in enumerate(st.transformer_blocks):
        transformer_options["block_index"] = i
        x = block_forward(block, x, contexts[i], transformer_options)
    if st.use_linear:
        x = st.proj_out(x)
    x = rearrange(x, 'b (h w) c -> b c h w', h=h, w=w).contiguous()
    if not st.use_linear:
        x = st.proj_out(x)
    return x + x_in


def sequential_forward(module, x, emb, context, transformer_options):
    """Forge: TimestepEmbedSequential.forward (block modifiers left out)."""
    for layer in module:
        if isinstance(layer, TimestepBlock):
            x = layer(x, emb)
        elif isinstance(layer, SpatialTransformer):
            x = spatial_forward(layer, x, context, transformer_options)
        else:
            x = layer(x)
    return x


# Forge: backend/nn/unet.py apply_control: the last residual of the list, added; a mismatch only prints
def apply_control(h, control, name):
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            try:
                h += ctrl
            except Exception:
                print("warning control could not be applied", h.shape, ctrl.shape)
    return h


class ForgeUNet(UNetModel):
    """The ldm UNet with Forge's forward (the tests swap the class of a built ldm UNet to this one, and that of each
    self-attention to ``CrossAttention``)."""

    @classmethod
    def from_ldm(cls, unet: UNetModel) -> ForgeUNet:
        unet.__class__ = cls
        for module in unet.modules():
            if isinstance(module, ldm_attention.BasicTransformerBlock):
                module.attn1.__class__ = CrossAttention
        return unet

    def forward(self, x, timesteps=None, context=None, y=None, control=None,
                transformer_options={}, **kwargs):  # noqa: B006 (Forge's signature; it writes into the dict)
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs = []
        h = x.type(self.dtype)
        for index, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", index)
            h = apply_control(sequential_forward(module, h, emb, context, transformer_options), control, "input")
            hs.append(h)
        transformer_options["block"] = ("middle", 0)
        h = apply_control(sequential_forward(self.middle_block, h, emb, context, transformer_options), control,
                          "middle")
        for index, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", index)
            hsp = apply_control(hs.pop(), control, "output")
            h = sequential_forward(module, torch.cat([h, hsp], dim=1), emb, context, transformer_options)
        return self.out(h.type(x.dtype))

"""A plain re-implementation of the official RIVAL loop (VP, diffusers DDIM), for parity tests.

Written from the specification (``rival-algorithm.md`` section 1) only, and deliberately sharing
no code with ``rival_ext``'s chain, attention or sampling modules: it works on integer DDIM
timesteps and VP latents, runs the official batch of 4 rows [ref-uncond, gen-uncond, ref-cond,
gen-cond], and drives self-attention by the official per-module call counter, so that an
agreement with the library is evidence, not a tautology. Only the ldm UNet and an abar table
are shared.

Example-based inpainting (spec 1.4 step 6, 1.7, 4.10): after every step the generated latent's
keep region is overwritten by the chain of the image being inpainted at the next level (in the
official setting that image is the reference; ``keep_chain`` may be another image's chain), and
after the loop it is that image's clean latent z0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

TRAIN_STEPS = 1000
ADAIN_EPS = 1e-5

PLAIN, REFERENCE, CONCAT = "plain", "reference", "concat"


@dataclass(frozen=True)
class OfficialConfig:
    """The official knobs (``configs/rival_*.json`` plus ``--editing_early_steps``)."""

    t_align: int = 600
    t_early: int = 600
    editing_early_steps: int = 1000
    guidance_scale: float = 5.0
    is_adain: bool = True


@dataclass(frozen=True)
class OfficialTexts:
    """Encoded texts (1, tokens, dim) of the inversion and of the four rows of every UNet call."""

    inversion: Tensor
    ref_uncond: Tensor  # always the encoded "" in the official code
    gen_uncond: Tensor  # negative prompt
    ref_cond: Tensor  # reference prompt ("" with is_null_prompt)
    gen_cond: Tensor  # prompt


def ddim_timesteps(steps: int) -> list[int]:
    """diffusers DDIM timesteps with steps_offset 1, largest first (981, 961, ..., 1 for 50)."""
    ratio = TRAIN_STEPS // steps
    return [ratio * (steps - 1 - i) + 1 for i in range(steps)]


def _abar_at(abar: Tensor, t: int) -> float:
    """abar of a level; negative levels are diffusers' final_alpha_cumprod = abar_0."""
    return float(abar[t]) if t >= 0 else float(abar[0])


def _eps(unet: nn.Module, z: Tensor, t: int, context: Tensor) -> Tensor:
    return unet(z, timesteps=torch.full((z.shape[0],), t, dtype=z.dtype), context=context)


@torch.no_grad()
def ddim_inversion(unet: nn.Module, abar: Tensor, z0: Tensor, steps: int, context: Tensor) -> list[Tensor]:
    """chain[0] = z0, chain[k] at level 1 + ratio (k - 1): the UNet sees the source latent at
    the target timestep and the clean latent counts as level abar_0 (spec 1.3)."""
    ratio = TRAIN_STEPS // steps
    chain = [z0]
    for tgt in reversed(ddim_timesteps(steps)):
        src = tgt - ratio
        a_src, a_tgt = _abar_at(abar, src), _abar_at(abar, tgt)
        latent = chain[-1]
        eps = _eps(unet, latent, tgt, context)
        x0 = (latent - (1 - a_src) ** 0.5 * eps) / a_src**0.5
        chain.append(a_tgt**0.5 * x0 + (1 - a_tgt) ** 0.5 * eps)
    return chain


def official_adain(feat: Tensor, target: Tensor) -> Tensor:
    """Per channel over (C, -1) views, unbiased variance + 1e-5 under the root (one image)."""
    c = feat.shape[1]
    f, r = feat.reshape(c, -1), target.reshape(c, -1)
    mu_f, mu_r = f.mean(-1, keepdim=True), r.mean(-1, keepdim=True)
    sd_f = (f.var(-1, keepdim=True) + ADAIN_EPS).sqrt()
    sd_r = (r.var(-1, keepdim=True) + ADAIN_EPS).sqrt()
    return ((f - mu_f) / sd_f * sd_r + mu_r).reshape(feat.shape)


@dataclass
class AttentionCounter:
    """One module's official step counter and the mode it picks at each non-bypassed call."""

    steps: int
    t_align: int
    editing_early_steps: int
    value: int = TRAIN_STEPS
    log: list[str] = field(default_factory=list)

    def tick(self) -> str:
        """Decrement, decide with the decremented value, reset once it reached <= 0."""
        self.value -= TRAIN_STEPS // self.steps
        c = self.value
        if self.value <= 0:
            self.value = TRAIN_STEPS
        if c > self.editing_early_steps:
            mode = PLAIN
        elif c > self.t_align:
            mode = REFERENCE
        else:
            mode = CONCAT
        self.log.append(mode)
        return mode


def _attend(module: nn.Module, x: Tensor, kv: Tensor) -> Tensor:
    """Multi-head softmax attention of x over the tokens kv, with the module's own weights."""
    b, n, _ = x.shape
    h = module.heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2)

    q, k, v = split(module.to_q(x)), split(module.to_k(kv)), split(module.to_v(kv))
    weights = (q @ k.transpose(-1, -2) * module.scale).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
    return module.to_out(out)


def _injected_forward(
    module: nn.Module, original: Callable[..., Tensor], counter: AttentionCounter
) -> Callable[..., Tensor]:
    """The official replacement forward: bypass, plain, reference-only or concat (spec 1.5)."""

    def forward(x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if x.shape[0] <= 2 or context is not None:
            return original(x, context=context, mask=mask)
        mode = counter.tick()
        if mode == PLAIN:
            return original(x, context=context, mask=mask)
        frames = 2 if x.shape[0] == 4 else 1
        grouped = x.reshape(-1, frames, *x.shape[1:])  # (groups, frames, tokens, dim)
        ref = grouped[:, :1].expand_as(grouped).reshape(x.shape)  # frame 0 of each row's group
        kv = ref if mode == REFERENCE else torch.cat([ref, x], dim=1)
        return _attend(module, x, kv)

    return forward


@contextmanager
def official_attention(
    unet: nn.Module, steps: int, t_align: int, editing_early_steps: int, skipped: int = 0
) -> Iterator[list[AttentionCounter]]:
    """Swap the forward of every attention module of the UNet's transformer blocks; restore after.

    As in the official code every CrossAttention gets the new forward, and the cross-attention
    ones (called with a context) bypass it; the per-module counters are yielded for inspection.
    ``skipped``: the loop starts that many timesteps late; the counters start where those calls
    would have left them, so that each call's mode is the one it has in a full run.
    """
    from ldm.modules.attention import BasicTransformerBlock

    swapped: list[tuple[nn.Module, object | None]] = []
    counters: list[AttentionCounter] = []
    try:
        for block in unet.modules():
            if not isinstance(block, BasicTransformerBlock):
                continue
            for module in (block.attn1, block.attn2):
                counter = AttentionCounter(steps, t_align, editing_early_steps)
                counter.value -= skipped * (TRAIN_STEPS // steps)
                swapped.append((module, module.__dict__.get("forward")))
                module.forward = _injected_forward(module, module.forward, counter)
                if module is block.attn1:
                    counters.append(counter)
        yield counters
    finally:
        for module, previous in reversed(swapped):
            if previous is None:
                del module.forward
            else:
                module.forward = previous


@dataclass(frozen=True)
class OfficialRun:
    chain: list[Tensor]  # VP latents, chain[0] = z0, chain[N] = x_T
    reference: Tensor  # (1,C,H,W) final reference latent (= z0 after the last overwrite)
    generated: Tensor  # (1,C,H,W) final generated latent, at level abar_0
    counters: list[AttentionCounter]  # one per self-attention module, with its mode log
    adain_steps: list[int]  # timesteps at which AdaIN ran


@torch.no_grad()
def official_rival(
    unet: nn.Module,
    abar: Tensor,
    z0: Tensor,
    steps: int,
    texts: OfficialTexts,
    config: OfficialConfig,
    generated_init: Tensor | None = None,
    chain: list[Tensor] | None = None,
    calls: int | None = None,
    trace: list[Tensor] | None = None,
    keep: Tensor | None = None,
    keep_chain: list[Tensor] | None = None,
    first_call: int = 0,
) -> OfficialRun:
    """Invert z0, then run the two-branch DDIM loop with CFG, AdaIN and the chain overwrite.

    ``generated_init`` defaults to x_T (the editing mode: nothing random); a precomputed
    ``chain`` (from :func:`ddim_inversion` with the same text) saves the inversion. ``calls``
    stops the loop after the model call of timestep index ``calls - 1`` (A1111's DDIM makes
    ``steps - 1`` calls and ends at level t = 1); ``trace`` receives the generated latent
    entering each call, then the final one.

    Inpainting: ``keep`` (H, W) bool is the region kept from the image being inpainted, whose
    chain ``keep_chain`` (default: the reference's ``chain``, the official setting) overwrites it
    after every step, and whose z0 (``keep_chain[0]``) it is at the end. ``first_call`` starts the
    loop at that timestep index with ``generated_init`` as the latent entering it (A1111's
    img2img at full strength noises to the top level and calls the model first one level lower).
    """
    if chain is None:
        chain = ddim_inversion(unet, abar, z0, steps, texts.inversion)
    if keep is not None and keep_chain is None:
        keep_chain = chain
    ratio = TRAIN_STEPS // steps
    context = torch.cat([texts.ref_uncond, texts.gen_uncond, texts.ref_cond, texts.gen_cond])
    reference = chain[steps - first_call]
    generated = chain[steps] if generated_init is None else generated_init
    adain_steps = []
    with official_attention(unet, steps, config.t_align, config.editing_early_steps, first_call) as counters:
        for i, t in enumerate(ddim_timesteps(steps)[:calls]):
            if i < first_call:
                continue
            if trace is not None:
                trace.append(generated)
            latents = torch.cat([reference, generated, reference, generated])
            eps = _eps(unet, latents, t, context)
            uncond, cond = eps.chunk(2)
            eps_ref = cond[0:1]
            eps_gen = uncond[1:2] + config.guidance_scale * (cond[1:2] - uncond[1:2])
            if config.is_adain and t > config.t_early:
                eps_gen = official_adain(eps_gen, eps_ref)
                adain_steps.append(t)
            both, noise = torch.cat([reference, generated]), torch.cat([eps_ref, eps_gen])
            a, a_prev = _abar_at(abar, t), _abar_at(abar, t - ratio)
            x0 = (both - (1 - a) ** 0.5 * noise) / a**0.5
            stepped = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * noise
            reference, generated = chain[steps - 1 - i], stepped[1:2]  # post-2023-12-06 chain index
            if keep is not None:  # the keep region onto the inpainted image's chain, at the next level
                generated = torch.where(keep, keep_chain[steps - 1 - i], generated)
    if keep is not None:  # the keep region ends on z0 (after a full loop the last overwrite already put it there)
        generated = torch.where(keep, keep_chain[0], generated)
    if trace is not None:
        trace.append(generated)
    return OfficialRun(chain, reference, generated, counters, adain_steps)

"""Cross-image self-attention injection through the attention's ``context`` input.

Every self-attention layer (``attn1`` of each transformer block of ldm, sgm and diffusers UNets,
found by structure) gets a forward pre-hook that rewrites its context: a row reads the features
of its source row (reference-only) or [source, own] (concat). Because to_k/to_v act per token,
this is exactly key/value injection, and whichever attention implementation A1111 swaps in
(and LoRA or hypernetworks on to_k/to_v) applies unchanged. Reference rows are their own source:
[K; K] attention equals K attention, so their outputs equal a plain UNet's.

A *blended* plan (an attention strength other than 1, several weighted references, a mask) leaves the
context alone and, after the layer, moves each generated row's plain output by
``sum_k strength * weight_k * (attention with reference k - plain)`` (``blended_output``), times the mask
where RIVAL acts; a reference mask keeps only its part of that reference's tokens. Layers outside the
plan's ``layers`` run plain.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .hooks import HookHandles
from .masks import kept_on_layer, on_layer
from .params import AttentionMode

CONTEXT_NAMES = ("context", "encoder_hidden_states")

Args = tuple[Any, ...]  # a module call's positional arguments
Kwargs = dict[str, Any]  # and its keyword arguments
PreHook = Callable[[nn.Module, Args, Kwargs], tuple[Args, Kwargs] | None]  # torch's forward pre-hook, with kwargs
PostHook = Callable[[nn.Module, Args, Kwargs, Tensor], Tensor | None]  # torch's forward hook, with kwargs


@dataclass(frozen=True)
class Term:
    """One reference in a blended plan: each generated row's source row in the pool, its weight (attention
    strength times the reference's weight), and the reference mask (latent grid) that keeps part of its tokens."""

    sources: Tensor  # (generated rows,) long
    weight: float
    kept: Tensor | None = None  # (H, W) float, None: every token


@dataclass(frozen=True)
class AttentionPlan:
    """How the rows of the next UNet call attend: one mode, and each row's source row.

    ``sources`` index the pool [banked rows, call rows]: with ``banked`` (per layer, reference
    features from a cache) the reference rows need not be in the call at all. With ``record``,
    each layer stores the inputs of the call's first ``record_rows`` rows (the reference rows).
    ``layers``: the layer indices that follow the plan (None: all). With ``terms`` the plan is blended:
    the call's rows from ``generated`` on get ``blended_output``, weighted by ``where`` (latent grid).
    """

    mode: AttentionMode
    sources: Tensor  # (rows,) long
    banked: Sequence[Tensor] | None = None
    record: list[Tensor | None] | None = None
    record_rows: int = 0
    layers: frozenset[int] | None = None
    terms: tuple[Term, ...] = ()
    generated: int = 0
    where: Tensor | None = None

    def acts_on(self, layer: int) -> bool:
        """Whether the layer attends otherwise than plainly under this plan."""
        return self.mode is not AttentionMode.PLAIN and (self.layers is None or layer in self.layers)


@dataclass(frozen=True)
class SelfAttentionLayer:
    """One attn1 module and where its forward takes the context."""
    name: str
    module: nn.Module
    context_name: str  # keyword of the layer's forward that carries the context
    context_position: int  # its positional index after the hidden states


def find_self_attention(unet: nn.Module) -> list[SelfAttentionLayer]:
    """Every self-attention layer of a UNet: ``attn1`` of blocks that also have ``attn2``."""
    layers = []
    for name, block in unet.named_modules():
        attn1 = getattr(block, "attn1", None)
        if not isinstance(attn1, nn.Module) or not isinstance(getattr(block, "attn2", None), nn.Module):
            continue
        if getattr(block, "disable_self_attn", False) or getattr(block, "only_cross_attention", False):
            continue
        params = list(inspect.signature(attn1.forward).parameters)
        context_name = next((n for n in CONTEXT_NAMES if n in params), None)
        if context_name is None:
            raise ValueError(f"{name}.attn1 has no context input ({type(attn1).__name__})")
        layers.append(SelfAttentionLayer(f"{name}.attn1", attn1, context_name, params.index(context_name)))
    return layers


def block_key(name: str) -> tuple[str, int, int]:
    """A self-attention layer's place as WebUIs name transformer blocks: (input|middle|output, block, index).

    ``input_blocks.4.1.transformer_blocks.0.attn1`` is ("input", 4, 0), ``middle_block.1.transformer_blocks.2``
    ("middle", 0, 2): the ``block``/``block_index`` that Forge's patches receive.
    """
    parts = name.split(".")
    kind = parts[0]
    index = int(parts[parts.index("transformer_blocks") + 1])
    if kind == "middle_block":
        return ("middle", 0, index)
    if kind in ("input_blocks", "output_blocks"):
        return (kind.removesuffix("_blocks"), int(parts[1]), index)
    raise ValueError(f"{name} is not a transformer block of an ldm/sgm UNet")


class SelfAttentionInjector:
    """Installs the context-rewriting pre-hooks for a ``with`` block; ``plan`` steers each call.

    Leaving the block removes exactly the hooks it added, also when the body raises, so the UNet
    is left as it was found. With no plan, or a plain one, the layers run untouched. ``applied``
    counts the layers that saw the plan since it was last reset (a bypassed layer does not).
    """

    def __init__(self, unet: nn.Module) -> None:
        self.layers = find_self_attention(unet)
        if not self.layers:
            raise ValueError("the UNet has no self-attention layers (attn1) that RIVAL can align")
        self.plan: AttentionPlan | None = None
        self.applied = 0
        self._handles = HookHandles("attention")

    @property
    def keys(self) -> list[tuple[str, int, int]]:
        """Each layer's place (``block_key``), in the layers' order."""
        return [block_key(layer.name) for layer in self.layers]

    @property
    def installed(self) -> bool:
        """Whether the pre-hooks are on the layers now."""
        return bool(self._handles)

    def __enter__(self) -> SelfAttentionInjector:
        self._handles.begin()
        try:
            for index, layer in enumerate(self.layers):
                hook = _context_hook(self, layer, index)
                self._handles.add(layer.module.register_forward_pre_hook(hook, with_kwargs=True))
                blend = _blend_hook(self, layer, index)
                self._handles.add(layer.module.register_forward_hook(blend, with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this injector installed (idempotent)."""
        self._handles.remove()
        self.plan = None

    @contextmanager
    def planned(self, plan: AttentionPlan | None) -> Iterator[None]:
        """Use ``plan`` for the UNet calls inside the block."""
        previous, self.plan = self.plan, plan
        try:
            yield
        finally:
            self.plan = previous


def planned_context(own: Tensor, plan: AttentionPlan, layer: int, record: bool = True) -> Tensor | None:
    """The context a layer's plan gives its rows (None: their own, unchanged: a plain or blended layer);
    records the reference rows."""
    if record and plan.record is not None:
        plan.record[layer] = own[: plan.record_rows].detach()
    if plan.terms or not plan.acts_on(layer):
        return None
    return injected_context(own, plan, layer)


Attend = Callable[[Tensor, Tensor, Tensor], Tensor]  # (hidden, context, value) -> the layer's attention output


def blended_output(out: Tensor, hidden: Tensor, own: Tensor, own_value: Tensor, plan: AttentionPlan, layer: int,
                   attend: Attend) -> Tensor:
    """A blended plan's output of one layer: ``out`` (every row's plain attention) with each generated row moved
    by ``sum_k weight_k * (attention with reference k - plain)``, times the mask where RIVAL acts."""
    if not plan.terms or not plan.acts_on(layer):
        return out
    g = plan.generated
    x, plain, mine, mine_v = hidden[g:], out[g:], own[g:], own_value[g:]
    pool, pool_v = own, own_value
    if plan.banked is not None:
        pool = torch.cat([plan.banked[layer].to(own), own])
        pool_v = torch.cat([plan.banked[layer].to(own_value), own_value])  # a reference row's value is its context
    total = torch.zeros_like(plain)
    for term in plan.terms:
        sources = term.sources.to(own.device)
        ref, ref_v = pool[sources], pool_v[sources]
        if term.kept is not None:
            tokens = kept_on_layer(term.kept, ref.shape[1], own.device)
            ref, ref_v = ref[:, tokens], ref_v[:, tokens]
        if plan.mode is AttentionMode.CONCAT:
            ref, ref_v = torch.cat([ref, mine], dim=1), torch.cat([ref_v, mine_v], dim=1)
        total = total + term.weight * (attend(x, ref, ref_v) - plain)
    if plan.where is not None:
        total = total * on_layer(plan.where, x.shape[1], total.device, total.dtype)[None, :, None]
    blended = out.clone()
    blended[g:] = plain + total
    return blended


def injected_context(own: Tensor, plan: AttentionPlan, layer: int = 0) -> Tensor:
    """The context that makes each row attend to its source row (and itself, in concat mode)."""
    if own.shape[0] != len(plan.sources):
        raise RuntimeError(
            f"RIVAL: a self-attention layer got {own.shape[0]} rows but the call was planned for "
            f"{len(plan.sources)}; another extension may be splitting the batch"
        )
    pool = own if plan.banked is None else torch.cat([plan.banked[layer].to(own), own])
    source = pool[plan.sources.to(own.device)]
    if plan.mode is AttentionMode.REFERENCE:
        return source
    return torch.cat([source, own], dim=1)


def _context_hook(injector: SelfAttentionInjector, layer: SelfAttentionLayer, index: int) -> PreHook:
    position = layer.context_position

    def hook(module: nn.Module, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs] | None:
        plan = injector.plan
        if plan is None:
            return None
        injector.applied += 1
        hidden = args[0] if args else kwargs["x" if "x" in kwargs else "hidden_states"]
        positional = len(args) > position
        own = args[position] if positional else kwargs.get(layer.context_name)
        own = hidden if own is None else own
        context = planned_context(own, plan, index)
        if context is None:
            return None
        if positional:
            return (*args[:position], context, *args[position + 1 :]), kwargs
        return args, {**kwargs, layer.context_name: context}

    return hook


def _blend_hook(injector: SelfAttentionInjector, layer: SelfAttentionLayer, index: int) -> PostHook:
    """After a layer of a blended plan: its plain output moved towards each reference (``blended_output``); the
    extra attentions run through the layer's own forward (no hooks)."""
    position = layer.context_position

    def hook(module: nn.Module, args: Args, kwargs: Kwargs, output: Tensor) -> Tensor | None:
        plan = injector.plan
        if plan is None or not plan.terms or not plan.acts_on(index):
            return None
        hidden = args[0] if args else kwargs["x" if "x" in kwargs else "hidden_states"]
        own = args[position] if len(args) > position else kwargs.get(layer.context_name)
        own = hidden if own is None else own

        def attend(x: Tensor, context: Tensor, _value: Tensor) -> Tensor:
            attended: Tensor = module.forward(x, **{layer.context_name: context})
            return attended

        return blended_output(output, hidden, own, own, plan, index, attend)

    return hook

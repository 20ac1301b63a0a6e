"""The reference's inversion for one pass: the chain key, the cache, progress and interrupt, precision.

A chain is deterministic for its key (the weights in effect and their precision, the source's pixels or
latent, its size, the sigma schedule, the reference text, the inversion precision, the
parameterization), so a repeated generation, every batch of a batch count, the hires pass's second
``process_before_every_sampling`` and an X/Y/Z grid over other values reuse it. The inversion runs
through the model's own path (without another extension's UNet forward or patches), in fp32 when the
setting asks and memory allows, redone in fp32 when half precision overflows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor

from .chain import InversionChain, NonFiniteInversion, coarse_schedule, invert
from .chain_cache import ChainCache
from .conditioning import Conditioning
from .eps_models import EpsModel, KDenoiser
from .host import ModelHost, Progress, Settings

Note = Callable[[str], None]
ChainKey = tuple[str, str, tuple[int, ...], tuple[float, ...], str, str, str]  # what ``chain_key`` gives


def chain_key(host: ModelHost, source: Tensor, sigmas: Tensor, text: str, precision: str) -> ChainKey:
    """Everything that shapes a chain; equal keys give bit-identical chains."""
    return (
        host.identity,
        hashlib.sha256(source.detach().cpu().contiguous().numpy().tobytes()).hexdigest(),
        tuple(source.shape),
        tuple(round(float(s), 7) for s in sigmas),
        text,
        precision,
        host.parameterization,
    )


def inversion_sigmas(levels: Tensor, settings: Settings, note: Note) -> Tensor:
    """The pass's levels, or fewer of them (setting *Inversion steps*, official ``invert_step``)."""
    steps = settings.inversion_steps
    if 0 < steps < len(levels) - 1:
        note(f"inversion on {steps} steps")
        return coarse_schedule(levels, steps)
    return levels


def cached_chain(
    cache: ChainCache,
    key: ChainKey,
    host: ModelHost,
    latent: Callable[[], Tensor],
    cond: Conditioning,
    sigmas: Tensor,
    settings: Settings,
    progress: Progress,
    what: str,
    note: Note,
) -> InversionChain:
    """The chain for ``key`` from the cache, or ``latent()`` inverted along ``sigmas`` (and cached)."""
    chain = cache.get(key)
    if chain is not None:
        note(f"{what} chain from cache" if what != "reference" else "chain from cache")
        return chain
    chain = invert_on_host(host, latent(), cond, sigmas, settings, progress, what, note)
    cache.put(key, chain)
    return chain


def invert_on_host(
    host: ModelHost,
    z0: Tensor,
    cond: Conditioning,
    sigmas: Tensor,
    settings: Settings,
    progress: Progress,
    what: str,
    note: Note,
) -> InversionChain:
    """Invert ``z0`` through the host's plain model: fp32 when asked and possible, else its precision."""
    total = len(sigmas) - 1

    def step(done: int, _total: int) -> None:
        progress.step(done, total)

    def with_model(model: EpsModel) -> InversionChain:
        return invert(z0, KDenoiser(model, host.schedule, cond), sigmas, step)

    def in_fp32() -> InversionChain:
        with host.full_precision() as model:
            return with_model(model)

    unavailable = host.fp32_unavailable
    fp32 = settings.inversion_precision == "fp32" and unavailable is None
    if settings.inversion_precision == "fp32" and not fp32:
        note(f"inversion in the model's precision ({unavailable})")
    with torch.no_grad(), host.plain_model(), progress.text(f"RIVAL: inverting the {what}"):
        if fp32:
            try:
                return in_fp32()
            except torch.cuda.OutOfMemoryError:  # the fp32 copy of the UNet does not fit: use the model's
                host.free_memory()
                note("inversion in the model's precision (no memory for an fp32 UNet)")
        try:
            return with_model(host.eps_model())
        except NonFiniteInversion:
            if unavailable is not None:
                raise
            note("inversion redone in fp32 (half precision gave NaN/inf)")
            return in_fp32()

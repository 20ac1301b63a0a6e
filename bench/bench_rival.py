"""Speed and memory of RIVAL against plain generation, through the library's own code paths.

Every scheme is a whole generation (UNet calls only: no VAE, no text encoder) with random weights,
which do not change the time: plain Euler with CFG; RIVAL's first image (the inversion, then one
UNet call per step carrying the shared reference row in front of the generated rows); a repeat
with the chain from ``ChainCache``; batch 4; a first image inverted on a coarse schedule; and the
official scheme (4 rows per step) for comparison. Schemes alternate inside each run, so drift hits
them alike, and medians over the runs are reported with ratios to plain generation of the same batch.

Issue 16's schemes are repeats with its settings (attention strength 0.5, AdaIN strength 0.5, two and
four weighted references, layers "style", a mask of where RIVAL acts), also against today's repeat.
Every scheme that claims a path is checked after each run: a probe counts each self-attention layer's
forwards (the blend's extra attentions included), the rows of the UNet calls and the weighted AdaIN
steps, so that a scheme that silently ran another path stops the benchmark.

  python bench/bench_rival.py --tiny                                    # seconds, CPU (the CI smoke run)
  python bench/bench_rival.py --device cuda --arch both --steps 30 --runs 3 --out results.md
  python bench/bench_rival.py --schemes plain1,repeat,strength,adain,refs2,refs4,style,mask   # issue 16 only
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rival_ext import (
    AttentionMode,
    AttentionPlan,
    Conditioning,
    DiscreteSchedule,
    InversionChain,
    KDenoiser,
    Reference,
    RivalParams,
    RivalSession,
    RivalUNet,
    SelfAttentionInjector,
    UNetEps,
    adain,
    check_schedule,
    initial_latents,
    invert,
    sample_euler,
    vp_scale,
)
from rival_ext.attention import block_key, find_self_attention
from rival_ext.chain import coarse_schedule
from rival_ext.chain_cache import ChainCache
from rival_ext.feature_cache import FeatureCache
from rival_ext.layers import selected_layers

ROOT = Path(__file__).resolve().parents[1]

SD15: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_heads": 8,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": 768,
    "legacy": False,
    "use_checkpoint": False,  # v1-inference.yaml says True; it only matters for training
}
"""The SD1.5 UNet of v1-inference.yaml (860 M parameters)."""

SD15_TINY: dict[str, Any] = {
    **SD15,
    "image_size": 8,
    "model_channels": 32,
    "attention_resolutions": [1, 2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_heads": 2,
    "context_dim": 32,
}

TOKENS = 77
CFG_SCALE = 7.0
TARGETS = {"first": 1.8, "repeat": 1.15, "batch4": 1.10, "features": 1.08, "memory": 1.10}
GIB = 2**30
MORE_REFS = 3  # further references of the four-reference scheme


# ----------------------------------------------------------------------------- models


def _sdpa_forward(self: nn.Module, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """ldm CrossAttention through PyTorch SDPA, as A1111's default "sdp" optimisation runs it."""
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, h = x.shape[0], self.heads
    q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return self.to_out(out.transpose(1, 2).reshape(b, out.shape[2], -1))


def _randomize(unet: nn.Module, device: torch.device, seed: int) -> None:
    """Fill every parameter with N(0, (0.5/sqrt(fan_in))^2): finite in fp16 through 70 blocks, no denormals."""
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.normal_(0.0, 0.5 / math.sqrt(fan_in), generator=gen)
            p.requires_grad_(False)


def _materialize(build: Callable[[], nn.Module], device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Build on the meta device and allocate once in the target dtype: no slow default init, no fp32 copy."""
    with torch.device("meta"):
        unet = build()
    if any(True for _ in unet.buffers()):
        raise RuntimeError("the UNet has buffers, which to_empty would leave uninitialised")
    unet = unet.to(dtype).to_empty(device=device)
    _randomize(unet, device, seed)
    return unet.eval()


def build_sd15(tiny: bool, device: torch.device, dtype: torch.dtype, attention: str) -> nn.Module:
    """ldm's UNetModel as A1111 runs it for SD1.x, in ``dtype`` without autocast."""
    import ldm.modules.attention
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = SD15_TINY if tiny else SD15
    unet = _materialize(lambda: UNetModel(**config), device, dtype, seed=0)
    unet.dtype = dtype  # ldm casts its input to this attribute
    if dtype != torch.float32:
        ldm.modules.attention._ATTN_PRECISION = "model"  # the fp32 path mixes dtypes without autocast
        # ldm builds the time embedding in fp32 and GroupNorm32 upcasts: keep both in the model dtype.
        unet.time_embed.register_forward_pre_hook(lambda _m, args: (args[0].to(dtype),))
        for module in unet.modules():
            if type(module).__name__ == "GroupNorm32":
                module.forward = nn.GroupNorm.forward.__get__(module)
    if attention == "sdp":
        for module in unet.modules():
            if type(module).__name__ in ("CrossAttention", "MemoryEfficientCrossAttention"):
                module.forward = types.MethodType(_sdpa_forward, module)
    return unet


def build_sdxl(tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, int]:
    """diffusers' SDXL-base UNet behind the ldm calling convention, and its pooled-text width."""
    from bench.diffusers_unet import SDXL_BASE, SDXL_TINY, build_sdxl_unet, pooled_dim

    config = SDXL_TINY if tiny else SDXL_BASE
    return _materialize(lambda: build_sdxl_unet(config), device, dtype, seed=0), pooled_dim(config)


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on GPU; on CPU the sampled peak RSS (every 5 ms).

    ``peak`` is absolute (weights included), ``delta`` the rise over the block's start.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start: int | None = None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = _rss()
            if self.start is not None:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            rss = _rss()
            if rss is not None and self.peak is not None:
                self.peak = max(self.peak, rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            rss = _rss()
            if rss is not None and self.peak is not None:
                self.peak = max(self.peak, rss)

    @property
    def delta(self) -> int | None:
        return None if self.peak is None or self.start is None else self.peak - self.start


class Probe:
    """What a generation did, counted cheaply, so that a scheme cannot silently run another path.

    Each self-attention layer's forward is wrapped (an instance attribute, as A1111's optimisations
    set it; the injector finds the wrapped signature): it counts every attention the layer computes,
    the blend's extra attentions too (``blended_output`` calls the layer's forward directly), and
    those given a context (the injector's rewritten context, or a blend term's reference keys), with
    their rows and, on CPU, their wall and process CPU time. A forward hook on the UNet, put on before RIVAL's row hook,
    sees each call's rows with the reference rows still in. ``normalized`` counts the AdaIN steps
    that went to a weighted ``normalizer`` (``count_normalized`` is put on a generation's router).
    """

    def __init__(self, unet: nn.Module, timed: bool) -> None:
        self.timed = timed
        self.layers = find_self_attention(unet)
        for layer in self.layers:
            layer.module.forward = self._counted(layer.module.forward, layer.context_name, layer.context_position)
        unet.register_forward_hook(self._call)
        self.reset()

    def reset(self) -> None:
        self.forwards = self.contextual = self.normalized = 0
        self.call_rows: set[int] = set()
        self.context_rows: set[int] = set()
        self.time = {"wall": 0.0, "CPU": 0.0}  # all self-attention forwards
        self.context_time = {"wall": 0.0, "CPU": 0.0}  # those with a context

    def _counted(self, forward: Callable[..., Tensor], name: str, position: int) -> Callable[..., Tensor]:
        @functools.wraps(forward)
        def counted(*args: Any, **kwargs: Any) -> Tensor:
            context = args[position] if len(args) > position else kwargs.get(name)
            if not self.timed:
                out = forward(*args, **kwargs)
                wall = cpu = 0.0
            else:
                start, cpu_start = time.perf_counter(), time.process_time()
                out = forward(*args, **kwargs)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            self.forwards += 1
            self.time["wall"] += wall
            self.time["CPU"] += cpu
            if context is not None:
                self.contextual += 1
                self.context_time["wall"] += wall
                self.context_time["CPU"] += cpu
                self.context_rows.add(out.shape[0])
            return out

        return counted

    def _call(self, _module: nn.Module, _args: tuple, output: Tensor) -> None:
        self.call_rows.add(output.shape[0])

    def count_normalized(self, session: RivalSession) -> None:
        """Count the steps whose AdaIN target is a weighted ``normalizer`` (not the paper's single eps)."""
        router = session.rows
        target = router.adain_target

        def counted(evaluation: Any) -> Any:
            out = target(evaluation)
            self.normalized += callable(out)
            return out

        router.adain_target = counted


@dataclass(frozen=True)
class Expect:
    """What one generation of a scheme must have done (``Probe``), per UNet call and in all."""

    forwards: int  # self-attention forwards per UNet call (the blend's extra attentions included)
    contextual: int  # of which with a context: rewritten layers, or one per blend term and acting layer
    rows: int  # rows of every UNet call (reference rows included)
    context_rows: int | None  # rows of the forwards with a context (None: there are none)
    normalized: int = 0  # AdaIN steps towards a weighted normalizer, in all

    def check(self, key: str, probe: Probe, calls: int) -> None:
        got = (probe.forwards, probe.contextual, probe.call_rows, probe.context_rows, probe.normalized)
        want = (calls * self.forwards, calls * self.contextual, {self.rows},
                set() if self.context_rows is None else {self.context_rows}, self.normalized)
        if got != want:
            raise RuntimeError(f"scheme {key} did not run the path it claims: (self-attention forwards, with a "
                               f"context, call rows, context rows, weighted AdaIN steps) = {got}, expected {want}")


# ----------------------------------------------------------------------------- the generations


@dataclass
class Bench:
    """One architecture at one size: its model, texts, reference latent, and the chain cache."""

    arch: str
    unet: nn.Module
    schedule: DiscreteSchedule
    sigmas: Tensor
    device: torch.device
    dtype: torch.dtype
    z0: Tensor  # the reference latent, VP (1,4,h,w)
    noise: Tensor  # (4,4,h,w) seed noise for plain generation
    cond: Conditioning  # generated rows (1 each)
    uncond: Conditioning
    ref: Conditioning  # reference text: the null prompt, so one reference row serves cond and uncond
    params: RivalParams = field(default_factory=RivalParams)
    cache: ChainCache = field(default_factory=ChainCache)
    chains: dict[int, InversionChain] = field(default_factory=dict)  # last chain per inversion step count
    inversion_s: tuple[float, float] = (0.0, 0.0)  # wall and CPU time of the last inversion
    features: FeatureCache | None = None  # reference features recorded for the "features" scheme
    more_z0: list[Tensor] = field(default_factory=list)  # further references' latents (issue 16)
    more_cache: ChainCache = field(default_factory=lambda: ChainCache(max_entries=8))  # their chains, kept
    tiny: bool = False

    def __post_init__(self) -> None:
        self.probe = Probe(self.unet, timed=self.device.type == "cpu")

    @property
    def model(self) -> UNetEps:
        return UNetEps(self.unet, self.schedule)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def chain(self, invert_sigmas: Tensor, cached: bool | None = None, more: int | None = None) -> InversionChain:
        """The chain through the cache, as the extension gets it; ``cached`` asserts a hit or a miss.
        ``more``: the chain of that further reference (issue 16), from a cache the other schemes keep."""
        z0, cache = (self.z0, self.cache) if more is None else (self.more_z0[more], self.more_cache)
        key = (
            self.arch,
            hashlib.sha256(z0.float().cpu().numpy().tobytes()).hexdigest(),
            tuple(round(float(s), 7) for s in invert_sigmas),
            "",
            str(self.dtype),
        )
        chain = cache.get(key)
        if cached is not None and cached != (chain is not None):
            raise RuntimeError(f"expected a chain cache {'hit' if cached else 'miss'}")
        if chain is None:
            _sync(self.device)
            start, cpu = time.perf_counter(), time.process_time()
            chain = invert(z0, KDenoiser(self.model, self.schedule, self.ref), invert_sigmas)
            _sync(self.device)
            self.inversion_s = (time.perf_counter() - start, time.process_time() - cpu)
            cache.put(key, chain)
            if more is None:
                self.chains[len(invert_sigmas) - 1] = chain
        return chain

    def cache_chains(self, more: int = 0) -> None:
        """Untimed: the reference's chain (and ``more`` further references') in the cache, for a repeat that
        runs without the first image before it (``--schemes``); a hit when it did run."""
        self.chain(self.sigmas)
        for k in range(more):
            self.chain(self.sigmas, more=k)

    def plain(self, batch: int) -> Tensor:
        """Plain Euler with CFG: sample_euler's loop without RIVAL, 2B rows per UNet call."""
        s, model = check_schedule(self.sigmas), self.model
        x = self.noise[:batch] * float(s[0])
        both = Conditioning.cat([self.cond.repeat(batch), self.uncond.repeat(batch)])
        for i in range(self.steps):
            sigma = float(s[i])
            t = torch.full((2 * batch,), float(self.schedule.sigma_to_t(sigma)), dtype=torch.float64)
            z = x * float(vp_scale(sigma))
            eps = model(torch.cat([z, z]), t.to(self.device), both)
            eps_c, eps_u = eps[:batch], eps[batch:]
            x = x + float(s[i + 1] - s[i]) * (eps_u + CFG_SCALE * (eps_c - eps_u))
        return x * float(vp_scale(s[-1]))

    def record_features(self) -> None:
        """An untimed generation that fills a fresh reference-feature cache (the first image's job)."""
        self.features = FeatureCache(max_bytes=64 * 2**30, device_bytes=64 * 2**30)
        self.rival(1, cached=None, features=self.features)

    def rival(
        self, batch: int, invert_steps: int | None = None, cached: bool | None = None,
        features: FeatureCache | None = None, params: RivalParams | None = None, more: tuple[float, ...] = (),
        where: Tensor | None = None,
    ) -> Tensor:
        """A RIVAL generation (library driver): 1 + 2B rows per UNet call, chain from the cache or inverted.

        Issue 16: ``params`` (strengths, reference weight, layers), ``more`` further references' weights (their
        chains from the cache; the null prompt, so one row each) and ``where`` (latent grid) go to the session
        as the job gives them (``AlignmentSpec``): all references, the mask, the layers resolved on this UNet.
        """
        params = params or self.params
        invert_sigmas = self.sigmas if invert_steps is None else coarse_schedule(self.sigmas, invert_steps)
        chain = self.chain(invert_sigmas, cached)
        x = initial_latents(chain.top, list(range(batch)), params.init_latent)
        x = x.to(self.device, self.dtype)
        with SelfAttentionInjector(self.unet) as injector:
            reference = Reference(chain, cond=self.ref, uncond=self.ref, weight=params.reference_weight)
            rival = RivalUNet(self.model, injector, params, reference, features)
            if more or where is not None or params.layers != "all" or params.reference_weight != 1.0:
                # RivalUNet takes the one reference; further references, the mask and the layers are the session's
                more_refs = [Reference(self.chain(invert_sigmas, cached, more=k), self.ref, self.ref, weight)
                             for k, weight in enumerate(more)]
                selected = (None if params.layers == "all"  # diffusers' layers (SDXL here) have no block names
                            else selected_layers(params.layers, injector.keys, self.arch == "sdxl"))
                rival.session = RivalSession(self.unet, params, (reference, *more_refs), self.model.parameterization,
                                             features, injector=injector, where=where, selected=selected)
            self.probe.count_normalized(rival.session)
            return sample_euler(
                rival, self.schedule, x, self.sigmas, self.cond.repeat(batch), self.uncond.repeat(batch), CFG_SCALE
            )

    def rival_separate(self) -> Tensor:
        """A repeat with another extension's instance forward on the UNet (as ControlNet installs):
        the reference rows then run in a pass of their own and are replayed into the call."""
        self.unet.forward = type(self.unet).forward.__get__(self.unet)
        try:
            return self.rival(1, cached=True)
        finally:
            del self.unet.forward

    def official(self) -> Tensor:
        """The official scheme's cost: inversion + one call of 4 rows per step.

        Rows [reference-uncond, generated-uncond, reference-cond, generated-cond]; each generated
        row reads its reference row through the same injector, and AdaIN takes the reference-cond eps.
        """
        chain = self.chain(self.sigmas, cached=False)
        s, model = check_schedule(self.sigmas), self.model
        x = initial_latents(chain.top, [0], self.params.init_latent).to(self.device, self.dtype)
        texts = Conditioning.cat([self.ref, self.uncond, self.ref, self.cond])
        sources = torch.tensor([0, 0, 2, 2])
        with SelfAttentionInjector(self.unet) as injector:
            for i in range(self.steps):
                sigma = float(s[i])
                t = float(self.schedule.sigma_to_t(sigma))
                z = x * float(vp_scale(sigma))
                z_ref = chain.reference_vp(sigma).to(self.device, self.dtype).unsqueeze(0)
                mode = self.params.attention_mode(t)
                plan = None if mode is AttentionMode.PLAIN else AttentionPlan(mode, sources)
                with injector.planned(plan):
                    tt = torch.full((4,), t, dtype=torch.float64, device=self.device)
                    eps = model(torch.cat([z_ref, z, z_ref, z]), tt, texts)
                guided = eps[1:2] + CFG_SCALE * (eps[3:4] - eps[1:2])
                if self.params.adain_active(t):
                    guided = adain(guided, eps[2:3])
                x = x + float(s[i + 1] - s[i]) * guided
        return x * float(vp_scale(s[-1]))


def make_bench(arch: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Bench:
    size = args.size or (1024 if arch == "sdxl" else 512)
    if size % 8:
        raise SystemExit(f"--size must be a multiple of 8, got {size}")
    if arch == "sd15":
        unet, pooled = build_sd15(args.tiny, device, dtype, args.attention), None
        context_dim = (SD15_TINY if args.tiny else SD15)["context_dim"]
    else:
        from bench.diffusers_unet import SDXL_BASE, SDXL_TINY

        unet, pooled = build_sdxl(args.tiny, device, dtype)
        context_dim = (SDXL_TINY if args.tiny else SDXL_BASE)["cross_attention_dim"]
    gen = torch.Generator().manual_seed(1)

    def text() -> Conditioning:
        context = torch.randn(1, TOKENS, context_dim, generator=gen)
        y = None
        if pooled is not None:
            time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
            y = torch.cat([torch.randn(1, pooled, generator=gen), time_ids], 1).to(device, dtype)
        return Conditioning(context.to(device, dtype), y)

    latent = size // 8
    steps = args.sdxl_steps if arch == "sdxl" and args.sdxl_steps else args.steps
    schedule = DiscreteSchedule.stable_diffusion()
    z0 = torch.randn(1, 4, latent, latent, generator=gen).to(device, dtype)
    noise = torch.randn(4, 4, latent, latent, generator=gen).to(device, dtype)
    cond, uncond, ref = text(), text(), text()
    more_gen = torch.Generator().manual_seed(2)  # its own stream: the draws above stay as they were
    more_z0 = [torch.randn(1, 4, latent, latent, generator=more_gen).to(device, dtype) for _ in range(MORE_REFS)]
    return Bench(arch, unet, schedule, schedule.ddim_sigmas(steps), device, dtype, z0, noise, cond, uncond, ref,
                 more_z0=more_z0, tiny=args.tiny)


# ----------------------------------------------------------------------------- schemes and report


@dataclass(frozen=True)
class Scheme:
    key: str
    label: str
    base: str | None  # key of the plain scheme its ratio is taken against
    calls: str  # UNet calls x rows, for the table
    run: Callable[[], Tensor]
    prepare: Callable[[], None] = lambda: None
    expect: Expect | None = None  # what each generation must have done (checked after every run)
    group: str = "main"  # "issue16": its own table, also against the RIVAL repeat


ISSUE16 = ("strength", "adain", "refs2", "refs4", "style", "mask")
SCHEMES = ("plain1", "first", "repeat", *ISSUE16, "features", "separate", "plain4", "batch4", "coarse", "official")


def schemes(b: Bench, coarse: list[int]) -> list[Scheme]:
    n, layers = b.steps, len(b.probe.layers)
    out = [
        Scheme("plain1", "plain, batch 1", None, f"{n}x2", lambda: b.plain(1), expect=Expect(layers, 0, 2, None)),
        Scheme("first", "RIVAL first image (inversion included)", "plain1", f"{n}x1 + {n}x3",
               lambda: b.rival(1, cached=False), b.cache.clear),
        Scheme("repeat", "RIVAL repeat (chain cached)", "plain1", f"{n}x3", lambda: b.rival(1, cached=True),
               b.cache_chains, Expect(layers, layers, 3, 3)),
        *issue16_schemes(b),
        Scheme("features", "RIVAL repeat, reference-feature cache", "plain1", f"{n}x2",
               lambda: b.rival(1, cached=True, features=b.features), b.record_features),
        Scheme("separate", "RIVAL repeat, reference in a separate pass (ControlNet present)", "plain1",
               f"{n}x1 + {n}x2", b.rival_separate, b.cache_chains),
        Scheme("plain4", "plain, batch 4", None, f"{n}x8", lambda: b.plain(4)),
        Scheme("batch4", "RIVAL batch 4 (chain cached)", "plain4", f"{n}x9", lambda: b.rival(4, cached=True),
               b.cache_chains),
    ]
    for k in coarse:
        out.append(Scheme(f"coarse{k}", f"RIVAL first image, inversion on {k} steps", "plain1", f"{k}x1 + {n}x3",
                          lambda k=k: b.rival(1, invert_steps=k, cached=False)))
    out.append(Scheme("official", "official scheme (inversion + 4 rows/step)", "plain1", f"{n}x1 + {n}x4",
                      b.official, b.cache.clear))
    return out


def issue16_schemes(b: Bench) -> list[Scheme]:
    """Repeats (chains cached, batch 1, the null reference prompt: one row per reference) with issue 16's
    settings. A blended plan computes each acting layer's plain attention for all rows and one more per
    reference term for the 2 generated rows; a layer choice rewrites the context of its layers only."""
    n, layers = b.steps, len(b.probe.layers)
    timesteps = [float(b.schedule.sigma_to_t(float(sigma))) for sigma in b.sigmas[:-1]]

    def adain_steps(params: RivalParams) -> int:
        return sum(params.adain_active(t) for t in timesteps)

    def repeat(key: str, label: str, rows: int, expect: Expect, params: RivalParams, more: tuple[float, ...] = (),
               where: Tensor | None = None) -> Scheme:
        return Scheme(key, label, "plain1", f"{n}x{rows}",
                      lambda: b.rival(1, cached=True, params=params, more=more, where=where),
                      lambda: b.cache_chains(len(more)), expect, "issue16")

    strength = RivalParams(attention_strength=0.5)
    adain = RivalParams(adain_strength=0.5, t_early=0.0)  # AdaIN at every step (t > 0), blended at 0.5
    two, four = RivalParams(reference_weight=0.5), RivalParams(reference_weight=0.25)
    h, w = b.z0.shape[-2:]
    half = torch.zeros(h, w)
    half[:, : w // 2] = 1.0  # RIVAL acts on the left half
    out = [
        repeat("strength", "RIVAL repeat, attention strength 0.5 (blended)", 3, Expect(2 * layers, layers, 3, 2),
               strength),
        repeat("adain", "RIVAL repeat, AdaIN strength 0.5 at every step (t_early 0)", 3,
               Expect(layers, layers, 3, 3, adain_steps(adain)), adain),
        repeat("refs2", "RIVAL repeat, 2 references (weights 0.5, 0.5)", 4,
               Expect(3 * layers, 2 * layers, 4, 2, adain_steps(two)), two, (0.5,)),
        repeat("refs4", f"RIVAL repeat, {1 + MORE_REFS} references (weights 0.25 each)", 2 + 1 + MORE_REFS,
               Expect((2 + MORE_REFS) * layers, (1 + MORE_REFS) * layers, 2 + 1 + MORE_REFS, 2,
                      adain_steps(four)), four, (0.25,) * MORE_REFS),
    ]
    choice = style_choice(b)
    if choice is not None:
        style = RivalParams(layers=choice)
        acting = len(selected_layers(choice, [block_key(layer.name) for layer in b.probe.layers], False))
        name = "style" if choice == "style" else f"{choice} (the tiny UNet's upper output blocks)"
        out.append(repeat("style", f'RIVAL repeat, layers "{name}" ({acting} of {layers} layers)', 3,
                          Expect(layers, acting, 3, 3), style))
    out.append(repeat("mask", "RIVAL repeat, mask: RIVAL on half the image (blended, strength 1)", 3,
                      Expect(2 * layers, layers, 3, 2, adain_steps(RivalParams())), RivalParams(), where=half))
    return out


def style_choice(b: Bench) -> str | None:
    """The layer choice of the "style" scheme: SD1.5's style blocks (output.6 .. output.11); on the tiny UNet,
    which has no such blocks, the upper half of its output blocks; none on SDXL, whose diffusers layers do not
    carry the WebUI's block names here."""
    if b.arch == "sdxl":
        return None
    if not b.tiny:
        return "style"
    blocks = sorted({key[1] for key in (block_key(layer.name) for layer in b.probe.layers) if key[0] == "output"})
    return ", ".join(f"output.{i}" for i in blocks[len(blocks) // 2 :])


@dataclass
class Result:
    scheme: Scheme
    times: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "CPU": []})
    inversion: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "CPU": []})
    peak: list[int] = field(default_factory=list)
    delta: list[int] = field(default_factory=list)
    # self-attention forwards' time, and of those with a context (timed on CPU only)
    attention: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "CPU": []})
    context_attention: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "CPU": []})

    def median(self, metric: str = "wall") -> float:
        return statistics.median(self.times[metric])

    def median_inversion(self, metric: str = "wall") -> float:
        return statistics.median(self.inversion[metric])


def warm_up(b: Bench, rows: list[int]) -> None:
    """One UNet call per row count (and one with the injector planned): allocator, kernels, oneDNN."""
    model = b.model
    for n in rows:
        z = b.noise[:1].expand(n, -1, -1, -1)
        t = torch.full((n,), 500.0, dtype=torch.float64, device=b.device)
        model(z, t, b.cond.repeat(n))
    with SelfAttentionInjector(b.unet) as injector, injector.planned(
        AttentionPlan(AttentionMode.CONCAT, torch.tensor([0, 0, 0]))
    ):
        model(b.noise[:1].expand(3, -1, -1, -1), torch.full((3,), 500.0, device=b.device), b.cond.repeat(3))
    _sync(b.device)


def run_arch(b: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Every scheme once per run, in a fixed interleaved order; returns the raw results."""
    n = b.steps
    coarse = sorted({k for k in (args.coarse or [n // 5, n // 2]) if 1 <= k < n})
    plan = select(schemes(b, coarse), args.schemes)
    coarse = [k for k in coarse if any(s.key == f"coarse{k}" for s in plan)]
    results = {s.key: Result(s) for s in plan}
    warm_up(b, [1] if b.device.type == "cpu" else [1, 2, 3, 4, 8, 9])
    for r in range(args.runs):
        for s in plan:
            s.prepare()
            b.inversion_s = (0.0, 0.0)
            b.probe.reset()
            _sync(b.device)
            with PeakMemory(b.device) as mem:
                start, cpu_start = time.perf_counter(), time.process_time()
                out = s.run()
                _sync(b.device)
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if not torch.isfinite(out).all():
                raise RuntimeError(f"{s.key} produced NaN/inf")
            if s.expect is not None:
                s.expect.check(s.key, b.probe, calls=n)
            res = results[s.key]
            if b.probe.timed:
                for metric in ("wall", "CPU"):
                    res.attention[metric].append(b.probe.time[metric])
                    res.context_attention[metric].append(b.probe.context_time[metric])
            for metric, value, inv in (("wall", seconds, b.inversion_s[0]), ("CPU", cpu, b.inversion_s[1])):
                res.times[metric].append(value)
                res.inversion[metric].append(inv)
            if mem.peak is not None:
                res.peak.append(mem.peak)
                res.delta.append(mem.delta or 0)
            inversion = f"  (inversion {b.inversion_s[0]:.3f} s)" if b.inversion_s[0] else ""
            print(f"  [{b.arch} run {r + 1}/{args.runs}] {s.key:9s} {seconds:9.3f} s wall {cpu:9.3f} s CPU{inversion}",
                  file=sys.stderr, flush=True)
    deviation = {k: chain_deviation(b.chains[k], b.chains[n], b.sigmas) for k in coarse}
    return {"bench": b, "results": results, "deviation": deviation}


def select(plan: list[Scheme], wanted: list[str] | None) -> list[Scheme]:
    """The schemes of ``--schemes`` in the benchmark's order; plain batch 1 always (every ratio's base), and the
    RIVAL repeat with any of issue 16's (their second base). ``coarse`` selects every coarse inversion."""
    if not wanted:
        return plan
    keys = {*wanted, "plain1", *(["repeat"] if set(wanted) & set(ISSUE16) else [])}
    if "batch4" in keys:
        keys.add("plain4")
    return [s for s in plan if s.key in keys or (s.key.startswith("coarse") and "coarse" in keys)]


def chain_deviation(coarse: InversionChain, full: InversionChain, sigmas: Tensor) -> tuple[float, float]:
    """RMS and max over the sampler's sigmas of |ref_coarse - ref_full| / |ref_full| (``reference_at``)."""
    errors = []
    for sigma in sigmas[:-1].tolist():
        a, ref = coarse.reference_at(sigma).double(), full.reference_at(sigma).double()
        errors.append(float((a - ref).norm() / ref.norm().clamp(min=1e-30)))
    return math.sqrt(sum(e * e for e in errors) / len(errors)), max(errors)


def _gib(values: list[int]) -> str:
    return f"{statistics.median(values) / GIB:.2f}" if values else "n/a"


def report(run: dict[str, Any], args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    """Markdown for one architecture, and every ratio it prints (keyed scheme.metric)."""
    b: Bench = run["bench"]
    results: dict[str, Result] = run["results"]
    n, size = b.steps, b.z0.shape[-1] * 8
    # Process CPU time only means something when the work runs on the CPU.
    metrics = ["wall", "CPU"] if b.device.type == "cpu" else ["wall"]
    mem_kind = "CUDA max allocated" if b.device.type == "cuda" else "process RSS sampled every 5 ms"
    ratios: dict[str, float] = {}
    head = "".join(f" median {m} s | ratio ({m}) |" for m in metrics)
    lines = [
        f"### {'SD1.5' if b.arch == 'sd15' else 'SDXL'} {size}x{size}, {n} steps, {args.runs} run(s)",
        "",
        f"| scheme | UNet calls x rows |{head} peak memory GiB ({mem_kind}) | rise over start GiB |",
        "|---|---|" + "---|---|" * len(metrics) + "---|---|",
    ]
    plain1 = results["plain1"]
    for key, res in results.items():
        if res.scheme.group != "main":
            continue
        cells = []
        for m in metrics:
            base = results[res.scheme.base] if res.scheme.base else res
            value = res.median(m) / base.median(m)
            if res.scheme.base:
                ratios[f"{key}.{m}"] = value
            cells.append(f"{res.median(m):.3f} | {value:.2f}x {'plain 4' if res.scheme.base == 'plain4' else 'plain'}")
        lines.append(f"| {res.scheme.label} | {res.scheme.calls} | {' | '.join(cells)} | {_gib(res.peak)} | "
                     f"{_gib(res.delta)} |")
        if any(res.inversion["wall"]):
            cells = []
            for m in metrics:
                inv = res.median_inversion(m)
                ratios[f"{key}_inversion.{m}"] = inv / plain1.median(m)
                cells.append(f"{inv:.3f} | {inv / plain1.median(m):.2f}x plain")
            lines.append(f"| - of which inversion | {res.scheme.calls.split(' + ')[0]} | {' | '.join(cells)} | | |")
    if run["deviation"]:
        lines += ["", "Coarse inversion: deviation of the reference latent from the full chain's at the sampler's "
                  "sigmas (`reference_at`, relative L2 per sigma; random weights):", ""]
        for k, (rms, worst) in run["deviation"].items():
            lines.append(f"- inversion on {k} steps instead of {n}: RMS over sigmas {rms:.4f}, max {worst:.4f}")
    points = _per_call(results, n, "wall")
    if len(points) >= 2:
        lines += ["", "Time per UNet call derived from the medians above (s per step / calls per step), by rows:", "",
                  "| rows in the call | " + " | ".join(str(k) for k in points) + " | fit |",
                  "|---" * (len(points) + 2) + "|"]
        for m in metrics:
            per_call = _per_call(results, n, m)
            a, slope = _fit(per_call)
            lines.append(f"| ms ({m}) | " + " | ".join(f"{v * 1000:.1f}" for v in per_call.values())
                         + f" | {a * 1000:.1f} ms per call + {slope * 1000:.1f} ms per row |")
    targets = [line for m in metrics for line in _targets(results, m)]
    if "first" in results:
        if plain1.peak and results["first"].peak:
            value = statistics.median(results["first"].peak) / statistics.median(plain1.peak)
            targets.append(_verdict("peak memory batch 1, RIVAL first image / plain", value, TARGETS["memory"]))
        else:
            targets.append("peak memory: n/a on this platform")
    if targets:
        lines += ["", "Targets:", "", *(f"- {line}" for line in targets)]
    if any(res.scheme.group == "issue16" for res in results.values()):
        lines += ["", *report_issue16(b, results, metrics, mem_kind, ratios)]
    return "\n".join(lines) + "\n", ratios


def report_issue16(b: Bench, results: dict[str, Result], metrics: list[str], mem_kind: str,
                   ratios: dict[str, float]) -> list[str]:
    """Issue 16's table (against plain and the RIVAL repeat) and its two cost targets, for each metric."""
    n, layers = b.steps, len(b.probe.layers)
    plain1, repeat = results["plain1"], results["repeat"]
    timed = bool(repeat.attention["wall"])

    def attention(res: Result, metric: str, context: bool = False) -> float:
        return statistics.median((res.context_attention if context else res.attention)[metric])

    head = "".join(f" median {m} s | x plain ({m}) | x RIVAL repeat ({m}) |"
                   + (f" self-attention {m} s (with a context) |" if timed else "") for m in metrics)
    lines = [
        f"#### Issue 16: strength, references, masks, layers ({layers} self-attention layers)",
        "",
        f"| scheme | UNet calls x rows | self-attention forwards per call (with a context) |{head} "
        f"peak memory GiB ({mem_kind}) | rise over start GiB |",
        "|---|---|---|" + ("---|---|---|" + ("---|" if timed else "")) * len(metrics) + "---|---|",
    ]
    for key, res in results.items():
        if key not in ("plain1", "repeat") and res.scheme.group != "issue16":
            continue
        cells = []
        for m in metrics:
            to_plain, to_repeat = res.median(m) / plain1.median(m), res.median(m) / repeat.median(m)
            if res.scheme.group == "issue16":
                ratios[f"{key}.{m}"] = to_plain
                ratios[f"{key}.{m}.repeat"] = to_repeat
            cells.append(f"{res.median(m):.3f} | {to_plain:.2f}x | {to_repeat:.2f}x"
                         + (f" | {attention(res, m):.3f} ({attention(res, m, True):.3f})" if timed else ""))
        e = res.scheme.expect
        forwards = f"{e.forwards} ({e.contextual})" if e else "n/a"
        lines.append(f"| {res.scheme.label} | {res.scheme.calls} | {forwards} | {' | '.join(cells)} | "
                     f"{_gib(res.peak)} | {_gib(res.delta)} |")
    lines += ["", f"Issue 16 targets (medians over whole generations of {n} steps, each metric on its own):", ""]
    for m in metrics:
        row = repeat.median(m) - plain1.median(m)
        one = attention(repeat, m) if timed else 0.0
        lines.append(f"- {m}: one more row = the RIVAL repeat less plain (the reference row in a 2-row call, with its "
                     f"concat attention): {row:.3f} s"
                     + (f"; one attention per layer = the RIVAL repeat's self-attention forwards ({layers} per call, "
                        f"{n} calls): {one:.3f} s" if timed else ""))

        def of_which(key: str, base: Result, count: int = 1, m: str = m) -> str:
            if not timed:
                return ""
            return f", of which self-attention {(attention(results[key], m) - attention(base, m)) / count:+.3f} s"

        for key in ("strength", "mask"):
            if key in results:
                extra = results[key].median(m) - repeat.median(m)
                verdict = (f" = {extra / one:.2f} attentions per layer (target <= 1: "
                           f"{'met' if extra <= one else 'NOT met'})" if one > 0 else "")
                lines.append(f"  - {key}: {extra:+.3f} s over the RIVAL repeat{of_which(key, repeat)}{verdict}")
        base = results.get("strength")
        for key, count in (("refs2", 1), ("refs4", MORE_REFS)):
            if key in results and base is not None:
                each = (results[key].median(m) - base.median(m)) / count
                verdict = (f" = {each / row:.2f} rows (target <= 1: {'met' if each <= row else 'NOT met'})"
                           if row > 0 else " (no row cost measured)")
                lines.append(f"  - {key}: each further reference {each:+.3f} s over the one-reference blend "
                             f"(strength 0.5){of_which(key, base, count)}{verdict}")
        for key in ("adain", "style"):
            if key in results:
                extra = results[key].median(m) - repeat.median(m)
                lines.append(f"  - {key}: {extra:+.3f} s over the RIVAL repeat ({extra / repeat.median(m):+.1%})"
                             f"{of_which(key, repeat)}")
        lines.append(f"  - the RIVAL repeat's own spread over the runs (max - min): "
                     f"{max(repeat.times[m]) - min(repeat.times[m]):.3f} s")
    if "style" not in results and b.arch == "sdxl":
        lines.append("- layers \"style\": not run on SDXL (the diffusers UNet's layers carry no WebUI block names)")
    return lines


def _per_call(results: dict[str, Result], n: int, metric: str) -> dict[int, float]:
    """Seconds per UNet call for each row count the schemes use (the official scheme less its inversion)."""
    out = {}
    if "first" in results:
        out[1] = results["first"].median_inversion(metric) / n
    out[2] = results["plain1"].median(metric) / n
    if "repeat" in results:
        out[3] = results["repeat"].median(metric) / n
    if "official" in results:
        official = results["official"]
        out[4] = (official.median(metric) - official.median_inversion(metric)) / n
    if "plain4" in results:
        out[8] = results["plain4"].median(metric) / n
    if "batch4" in results:
        out[9] = results["batch4"].median(metric) / n
    return out


def _fit(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares time = a + slope * rows: the fixed cost of a call and the cost of each row."""
    xs, ys = list(points), list(points.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def _verdict(name: str, value: float, limit: float) -> str:
    state = "met" if value <= limit else f"NOT met (gap {value / limit - 1:+.0%} over the target)"
    return f"{name}: {value:.2f}x, target <= {limit:.2f}x: {state}"


def _targets(results: dict[str, Result], metric: str) -> list[str]:
    plain1 = results["plain1"].median(metric)
    out = []
    for key, name in (("first", "first image / plain"), ("repeat", "repeat, chain cached / plain"),
                      ("batch4", "batch 4 / plain batch 4"), ("features", "feature cache / plain")):
        if key in results:
            base = results["plain4"].median(metric) if key == "batch4" else plain1
            out.append(_verdict(f"{name} ({metric})", results[key].median(metric) / base, TARGETS[key]))
    return out


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU ({model}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rival_ext", "bench"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes in rival_ext/ or bench/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default=None, help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 30; 4 with --tiny)")
    p.add_argument("--sdxl-steps", type=int, default=None, help="steps for SDXL when they differ from --steps")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 512 SD1.5, 1024 SDXL)")
    p.add_argument("--runs", type=int, default=None, help="runs per scheme, the median is reported (default 3)")
    p.add_argument("--arch", choices=["sd15", "sdxl", "both"], default="sd15")
    p.add_argument("--coarse", type=int, nargs="*", default=None,
                   help="inversion step counts for the coarse-inversion rows (default steps/5 and steps/2)")
    p.add_argument("--attention", choices=["sdp", "ldm"], default="sdp",
                   help="SD1.5 attention kernel: PyTorch SDPA (A1111's default) or ldm's einsum")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 with --tiny). 1 thread is steadier on a shared CPU")
    p.add_argument("--schemes", type=lambda v: [k.strip() for k in v.split(",") if k.strip()], default=None,
                   help=f"comma-separated schemes to run (default: all): {', '.join(SCHEMES)}; plain1 always, "
                   "repeat with any of issue 16's (strength .. mask), plain4 with batch4")
    p.add_argument("--tiny", action="store_true", help="toy UNets, 64x64 px, 4 steps, 1 run, CPU: seconds")
    p.add_argument("--out", default=None, help="write the report as markdown to this file")
    args = p.parse_args(argv)
    if args.tiny:
        args.device = args.device or "cpu"
        args.size = args.size or 64
        args.steps = args.steps or 4
        args.runs = args.runs or 1
        args.threads = args.threads or 1
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.steps = args.steps or 30
    args.runs = args.runs or 3
    if args.steps < 1 or args.runs < 1:
        p.error("--steps and --runs must be at least 1")
    unknown = sorted(set(args.schemes or ()) - set(SCHEMES))
    if unknown:
        p.error(f"unknown scheme(s) {', '.join(unknown)}; known: {', '.join(SCHEMES)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints and returns the markdown report and every ratio in it.

    The process-wide CPU settings it changes (threads, flushing denormals) are restored on return,
    so that tests run after it in the same process see the defaults.
    """
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        if args.device == "cpu" and not args.tiny:
            torch.set_flush_denormal(True)  # random weights must not hit the slow denormal path
        if args.threads:
            torch.set_num_threads(args.threads)
        return _main(args, argv)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = torch.float16 if (args.dtype or ("fp16" if device.type == "cuda" else "fp32")) == "fp16" else torch.float32
    command = "python bench/bench_rival.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                               else argv))
    header = [
        "## RIVAL speed and memory",
        "",
        f"- machine: {_machine(device)}",
        f"- dtype: {str(dtype).removeprefix('torch.')}, SD1.5 attention: {args.attention}, CFG on (2 rows per image)",
        f"- commit: {_commit()}",
        f"- command: `{command}`",
        "- random weights, UNet calls only (no VAE, no text encoder); SDXL is diffusers' UNet2DConditionModel "
        "with the SDXL-base config (sgm is not on PyPI)",
    ]
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        header.append(f"- load average at start: {os.getloadavg()[0]:.2f}")
    sections: list[str] = []
    ratios: dict[str, float] = {}
    arches = ["sd15", "sdxl"] if args.arch == "both" else [args.arch]

    def text() -> str:
        return "\n".join(header) + "\n\n" + "\n".join(sections)

    for arch in arches:
        if arch == "sdxl" and args.tiny and not _has_diffusers():
            print("skipping sdxl: diffusers is not installed", file=sys.stderr)
            continue
        with torch.inference_mode():
            bench = make_bench(arch, args, device, dtype)
            run = run_arch(bench, args)
        section, arch_ratios = report(run, args)
        sections.append(section)
        ratios.update({f"{arch}.{k}": v for k, v in arch_ratios.items()})
        del bench, run
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.out:  # write after each architecture, so a run cut short keeps what it measured
            Path(args.out).write_text(text())
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        header.append(f"- load average at end: {os.getloadavg()[0]:.2f}")
    report_text = text()
    print(report_text, flush=True)
    if args.out:
        Path(args.out).write_text(report_text)
    return {"report": report_text, "ratios": ratios}


def _has_diffusers() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()

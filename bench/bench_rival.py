"""Speed and memory of RIVAL against plain generation, through the library's own code paths.

Every scheme is a whole generation (UNet calls only: no VAE, no text encoder) with random weights,
which do not change the time: plain Euler with CFG; RIVAL's first image (the inversion, then one
UNet call per step carrying the shared reference row in front of the generated rows); a repeat
with the chain from ``ChainCache``; batch 4; a first image inverted on a coarse schedule; and the
official scheme (4 rows per step) for comparison. Schemes alternate inside each run, so drift hits
them alike, and medians over the runs are reported with ratios to plain generation of the same batch.

  python bench/bench_rival.py --tiny                                    # seconds, CPU (the CI smoke run)
  python bench/bench_rival.py --device cuda --arch both --steps 30 --runs 3 --out results.md
"""

from __future__ import annotations

import argparse
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
from rival_ext.chain import coarse_schedule
from rival_ext.chain_cache import ChainCache
from rival_ext.feature_cache import FeatureCache

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

    @property
    def model(self) -> UNetEps:
        return UNetEps(self.unet, self.schedule)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def chain(self, invert_sigmas: Tensor, cached: bool | None = None) -> InversionChain:
        """The chain through the cache, as the extension gets it; ``cached`` asserts a hit or a miss."""
        key = (
            self.arch,
            hashlib.sha256(self.z0.float().cpu().numpy().tobytes()).hexdigest(),
            tuple(round(float(s), 7) for s in invert_sigmas),
            "",
            str(self.dtype),
        )
        chain = self.cache.get(key)
        if cached is not None and cached != (chain is not None):
            raise RuntimeError(f"expected a chain cache {'hit' if cached else 'miss'}")
        if chain is None:
            _sync(self.device)
            start, cpu = time.perf_counter(), time.process_time()
            chain = invert(self.z0, KDenoiser(self.model, self.schedule, self.ref), invert_sigmas)
            _sync(self.device)
            self.inversion_s = (time.perf_counter() - start, time.process_time() - cpu)
            self.cache.put(key, chain)
            self.chains[len(invert_sigmas) - 1] = chain
        return chain

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
        features: FeatureCache | None = None,
    ) -> Tensor:
        """A RIVAL generation (library driver): 1 + 2B rows per UNet call, chain from the cache or inverted."""
        invert_sigmas = self.sigmas if invert_steps is None else coarse_schedule(self.sigmas, invert_steps)
        chain = self.chain(invert_sigmas, cached)
        x = initial_latents(chain.top, list(range(batch)), self.params.init_latent)
        x = x.to(self.device, self.dtype)
        with SelfAttentionInjector(self.unet) as injector:
            reference = Reference(chain, cond=self.ref, uncond=self.ref)
            rival = RivalUNet(self.model, injector, self.params, reference, features)
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
    return Bench(arch, unet, schedule, schedule.ddim_sigmas(steps), device, dtype, z0, noise, cond, uncond, ref)


# ----------------------------------------------------------------------------- schemes and report


@dataclass(frozen=True)
class Scheme:
    key: str
    label: str
    base: str | None  # key of the plain scheme its ratio is taken against
    calls: str  # UNet calls x rows, for the table
    run: Callable[[], Tensor]
    prepare: Callable[[], None] = lambda: None


def schemes(b: Bench, coarse: list[int]) -> list[Scheme]:
    n = b.steps
    out = [
        Scheme("plain1", "plain, batch 1", None, f"{n}x2", lambda: b.plain(1)),
        Scheme("first", "RIVAL first image (inversion included)", "plain1", f"{n}x1 + {n}x3",
               lambda: b.rival(1, cached=False), b.cache.clear),
        Scheme("repeat", "RIVAL repeat (chain cached)", "plain1", f"{n}x3", lambda: b.rival(1, cached=True)),
        Scheme("features", "RIVAL repeat, reference-feature cache", "plain1", f"{n}x2",
               lambda: b.rival(1, cached=True, features=b.features), b.record_features),
        Scheme("separate", "RIVAL repeat, reference in a separate pass (ControlNet present)", "plain1",
               f"{n}x1 + {n}x2", b.rival_separate),
        Scheme("plain4", "plain, batch 4", None, f"{n}x8", lambda: b.plain(4)),
        Scheme("batch4", "RIVAL batch 4 (chain cached)", "plain4", f"{n}x9", lambda: b.rival(4, cached=True)),
    ]
    for k in coarse:
        out.append(Scheme(f"coarse{k}", f"RIVAL first image, inversion on {k} steps", "plain1", f"{k}x1 + {n}x3",
                          lambda k=k: b.rival(1, invert_steps=k, cached=False)))
    out.append(Scheme("official", "official scheme (inversion + 4 rows/step)", "plain1", f"{n}x1 + {n}x4",
                      b.official, b.cache.clear))
    return out


@dataclass
class Result:
    scheme: Scheme
    times: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "CPU": []})
    inversion: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "CPU": []})
    peak: list[int] = field(default_factory=list)
    delta: list[int] = field(default_factory=list)

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
    plan = schemes(b, coarse)
    results = {s.key: Result(s) for s in plan}
    warm_up(b, [1] if b.device.type == "cpu" else [1, 2, 3, 4, 8, 9])
    for r in range(args.runs):
        for s in plan:
            s.prepare()
            b.inversion_s = (0.0, 0.0)
            _sync(b.device)
            with PeakMemory(b.device) as mem:
                start, cpu_start = time.perf_counter(), time.process_time()
                out = s.run()
                _sync(b.device)
                seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if not torch.isfinite(out).all():
                raise RuntimeError(f"{s.key} produced NaN/inf")
            res = results[s.key]
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
    lines += ["", "Time per UNet call derived from the medians above (s per step / calls per step), by rows:", "",
              "| rows in the call | " + " | ".join(str(k) for k in _per_call(results, n, "wall")) + " | fit |",
              "|---" * 8 + "|"]
    for m in metrics:
        per_call = _per_call(results, n, m)
        a, slope = _fit(per_call)
        lines.append(f"| ms ({m}) | " + " | ".join(f"{v * 1000:.1f}" for v in per_call.values())
                     + f" | {a * 1000:.1f} ms per call + {slope * 1000:.1f} ms per row |")
    lines += ["", "Targets:", ""]
    for m in metrics:
        lines += [f"- {line}" for line in _targets(results, m)]
    if plain1.peak and results["first"].peak:
        value = statistics.median(results["first"].peak) / statistics.median(plain1.peak)
        lines.append(f"- {_verdict('peak memory batch 1, RIVAL first image / plain', value, TARGETS['memory'])}")
    else:
        lines.append("- peak memory: n/a on this platform")
    return "\n".join(lines) + "\n", ratios


def _per_call(results: dict[str, Result], n: int, metric: str) -> dict[int, float]:
    """Seconds per UNet call for each row count the schemes use (the official scheme less its inversion)."""
    official = results["official"]
    return {
        1: results["first"].median_inversion(metric) / n,
        2: results["plain1"].median(metric) / n,
        3: results["repeat"].median(metric) / n,
        4: (official.median(metric) - official.median_inversion(metric)) / n,
        8: results["plain4"].median(metric) / n,
        9: results["batch4"].median(metric) / n,
    }


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
    plain1, plain4 = results["plain1"].median(metric), results["plain4"].median(metric)
    return [
        _verdict(f"first image / plain ({metric})", results["first"].median(metric) / plain1, TARGETS["first"]),
        _verdict(f"repeat, chain cached / plain ({metric})", results["repeat"].median(metric) / plain1,
                 TARGETS["repeat"]),
        _verdict(f"batch 4 / plain batch 4 ({metric})", results["batch4"].median(metric) / plain4, TARGETS["batch4"]),
        _verdict(f"feature cache / plain ({metric})", results["features"].median(metric) / plain1,
                 TARGETS["features"]),
    ]


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

"""Spec section 5, invariants 1-6 and 20: noise levels, DDIM = Euler, the inversion chain.

Everything runs in float64. Where two computations are algebraically identical but take different
floating-point routes, the tolerance is a few hundred ulps of the values involved (1e-12 for
latents of order 1); where they take the same route the check is bit-exact.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import make_unet, photo_latent, text

from rival_ext import (
    Conditioning,
    DiscreteSchedule,
    KDenoiser,
    Reference,
    RivalParams,
    RivalUNet,
    SelfAttentionInjector,
    UNetEps,
    invert,
    sample_ddim,
    sample_euler,
    ve_to_vp,
    vp_scale,
    vp_to_ve,
)

TOL = 1e-12




def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, end: float = 0.0) -> torch.Tensor:
    """k-diffusion's Karras schedule (n sigmas, then ``end``)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.tensor([end], dtype=torch.float64)])


class TimeOnlyEps:
    """An eps model whose output depends only on the timestep and the condition, never on z."""

    def __init__(self, shape: tuple[int, ...], seed: int = 3) -> None:
        g = torch.Generator().manual_seed(seed)
        self.pattern = torch.randn(shape, generator=g, dtype=torch.float64)
        self.phase = torch.rand(shape, generator=g, dtype=torch.float64) * 6.0

    def __call__(self, z: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        tt = t.to(torch.float64).reshape(-1, 1, 1, 1)
        c = cond.context.to(torch.float64).mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        eps = torch.sin(tt / 97.0 + self.phase) * (1.0 + c) + 0.3 * torch.cos(tt / 13.0) * self.pattern
        return eps.expand(z.shape[0], *self.pattern.shape).to(z.dtype)


class SmoothEps:
    """A smooth, input-dependent eps model (Lipschitz in z, smooth in t)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.base = TimeOnlyEps(shape, seed=5)

    def __call__(self, z: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return 0.5 * torch.tanh(z) + 0.5 * self.base(z, t, cond)


def plain_euler(denoiser: KDenoiser, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Plain Euler (guidance 1, no RIVAL) from the VE latent x; returns the VP latent."""
    for k in range(len(sigmas) - 1):
        sigma = torch.full((1,), float(sigmas[k]), dtype=torch.float64)
        x = x + float(sigmas[k + 1] - sigmas[k]) * (x - denoiser(x, sigma)) / float(sigmas[k])
    return x * float(vp_scale(sigmas[-1]))


@pytest.fixture(scope="module")
def unet8():
    return make_unet(torch.float64, seed=11)


@pytest.fixture(scope="module")
def z0() -> torch.Tensor:
    return photo_latent("astronaut", size=8)


# --- 1. VP/VE conversion --------------------------------------------------------------------


def test_1_sigma_table_matches_alphas_cumprod(schedule: DiscreteSchedule) -> None:
    abar = schedule.alphas_cumprod
    torch.testing.assert_close(schedule.sigmas, ((1 - abar) / abar).sqrt(), rtol=0, atol=0)
    # Spec section 0.2 values.
    for t, a in ((0, 0.99915), (1, 0.998296), (601, 0.159816), (981, 0.0057755), (999, 0.0046601)):
        assert float(abar[t]) == pytest.approx(a, rel=1e-4)
    for t, s in ((0, 0.029167), (1, 0.041314), (601, 2.29285), (981, 13.12041), (999, 14.61464)):
        assert float(schedule.sigmas[t]) == pytest.approx(s, rel=1e-5)
    assert schedule.sigma_min == float(schedule.sigmas[0])
    assert schedule.sigma_max == float(schedule.sigmas[-1])


def test_1_vp_ve_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    for sigma in (0.0, 0.029167, 1.0, 14.6):
        z = ve_to_vp(x, sigma)
        torch.testing.assert_close(z, x / math.sqrt(1 + sigma**2), rtol=1e-15, atol=0)
        torch.testing.assert_close(vp_to_ve(z, sigma), x, rtol=1e-15, atol=0)
    assert float(vp_scale(0.0)) == 1.0


def test_1_sigma_t_maps_are_inverse(schedule: DiscreteSchedule) -> None:
    g = torch.Generator().manual_seed(1)
    log_s = math.log(schedule.sigma_min) + torch.rand(2000, generator=g, dtype=torch.float64) * (
        math.log(schedule.sigma_max) - math.log(schedule.sigma_min)
    )
    sigmas = log_s.exp()
    torch.testing.assert_close(schedule.t_to_sigma(schedule.sigma_to_t(sigmas)), sigmas, rtol=1e-12, atol=0)
    # Exact at the integer timesteps.
    ts = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(schedule.sigma_to_t(schedule.sigmas), ts, rtol=0, atol=1e-9)
    torch.testing.assert_close(schedule.t_to_sigma(ts), schedule.sigmas, rtol=1e-13, atol=0)
    # Linear in log sigma between two levels (k-diffusion's sigma_to_t).
    lo, hi = schedule.log_sigmas[600], schedule.log_sigmas[601]
    mid = float(((lo + hi) / 2).exp())
    assert float(schedule.sigma_to_t(mid)) == pytest.approx(600.5, abs=1e-9)
    # Clamped outside the table, as k-diffusion.
    assert float(schedule.sigma_to_t(0.0)) == 0.0
    assert float(schedule.sigma_to_t(100.0)) == 999.0


def test_1_maps_and_denoiser_accept_sigmas_on_another_device(schedule: DiscreteSchedule, monkeypatch) -> None:
    """The tables live on the CPU; A1111's sigmas (and ``invert``'s) live on the GPU.

    FakeTensorMode gives CPU-only machines a "cuda" device with torch's real device checks. A CUDA
    build of torch (2.1.2 from PyPI, the users' runtime) initialises CUDA for it, which fails without
    a driver: that initialisation is stubbed, and an explicit index avoids asking for the device.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: None)
    prompt = text(1)  # a real CPU tensor (torch 2.1's fake mode cannot draw with a generator)
    with FakeTensorMode(allow_non_fake_inputs=True):
        sigma = torch.full((2,), 3.0, dtype=torch.float64, device="cuda:0")
        t = schedule.sigma_to_t(sigma)
        assert t.device == sigma.device and t.shape == (2,)
        assert schedule.t_to_sigma(t).device == sigma.device
        x = torch.zeros(2, 4, 8, 8, dtype=torch.float32, device="cuda:0")
        den = KDenoiser(lambda z, tt, _c: z * 0.5 + tt.reshape(-1, 1, 1, 1).to(z.dtype), schedule, prompt)
        assert den(x, sigma.float()).device == x.device


# --- 2. DDIM = Euler -------------------------------------------------------------------------


@pytest.mark.parametrize(("t_a", "t_b"), [(981, 961), (601, 1), (21, 0), (1, 21), (0, 981), (400, 401)])
def test_2_ddim_step_equals_euler_step(schedule: DiscreteSchedule, t_a: int, t_b: int) -> None:
    """One DDIM (eta 0) step between two levels is one VE Euler step, downwards and upwards."""
    g = torch.Generator().manual_seed(t_a * 1000 + t_b)
    z_a = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    e = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    a_a, a_b = schedule.alphas_cumprod[t_a], schedule.alphas_cumprod[t_b]
    x0 = (z_a - (1 - a_a).sqrt() * e) / a_a.sqrt()
    z_b = a_b.sqrt() * x0 + (1 - a_b).sqrt() * e
    s_a, s_b = float(schedule.sigmas[t_a]), float(schedule.sigmas[t_b])
    x_b = vp_to_ve(z_a, s_a) + (s_b - s_a) * e
    torch.testing.assert_close(vp_to_ve(z_b, s_b), x_b, rtol=0, atol=TOL)


def test_2_library_ddim_loop_equals_euler_on_the_ddim_grid(unet8, schedule: DiscreteSchedule, z0) -> None:
    """``sample_ddim`` (VP, to abar_0) = ``sample_euler`` on the same levels ending at sigma_min, RIVAL on."""
    model = UNetEps(unet8, schedule)
    steps = 5
    sigmas = schedule.ddim_sigmas(steps, end=schedule.sigma_min)
    chain = invert(z0, KDenoiser(model, schedule, text(1)), sigmas)
    start = chain.top.flip(-1).unsqueeze(0)  # any start other than the top
    params = RivalParams(t_align=600, t_early=400)  # every mode and AdaIN on and off
    with SelfAttentionInjector(unet8) as inj:
        rival = RivalUNet(model, inj, params, Reference(chain, text(1), text(2)))
        euler = sample_euler(rival, schedule, start, sigmas, text(3), text(4), 5.0)
        ddim = sample_ddim(
            rival,
            schedule,
            start * float(vp_scale(sigmas[0])),
            schedule.ddim_timesteps(steps),
            text(3),
            text(4),
            5.0,
        )
    # Euler's timesteps come from sigma_to_t (integers up to ~1e-13), DDIM's are exact integers.
    torch.testing.assert_close(euler, ddim, rtol=0, atol=1e-10)


# --- 3. Inversion = the official next_step ---------------------------------------------------


def official_inversion(model: UNetEps, schedule: DiscreteSchedule, z0, steps: int, cond) -> list:
    """The official VP DDIM inversion: UNet at the target timestep on the source latent."""
    abar = schedule.alphas_cumprod
    ratio = 1000 // steps
    chain = [z0]
    for tgt in reversed(schedule.ddim_timesteps(steps)):  # 1, 21, ..., 981
        src = tgt - ratio
        eps = model(chain[-1], torch.tensor([float(tgt)], dtype=torch.float64), cond)
        a_src = abar[src] if src >= 0 else abar[0]  # set_alpha_to_one=False: clean latent at abar_0
        a_tgt = abar[tgt]
        x0 = (chain[-1] - (1 - a_src).sqrt() * eps) / a_src.sqrt()
        chain.append(a_tgt.sqrt() * x0 + (1 - a_tgt).sqrt() * eps)
    return chain


def test_3_inversion_matches_official_next_step(unet8, schedule: DiscreteSchedule, z0) -> None:
    model = UNetEps(unet8, schedule)
    steps = 10
    cond = text(7)
    official = official_inversion(model, schedule, z0, steps, cond)
    chain = invert(z0, KDenoiser(model, schedule, cond), schedule.ddim_sigmas(steps, end=schedule.sigma_min))
    assert chain.steps == steps
    for k in range(steps + 1):
        node_vp = chain.nodes[k] * float(vp_scale(chain.sigmas[k]))
        # Measured <= 3e-15; the UNet sees t = sigma_to_t(sigma(t)), an integer up to ~1e-13.
        torch.testing.assert_close(node_vp, official[steps - k][0], rtol=0, atol=1e-11)
    # The origin is the clean latent treated as level abar_0.
    torch.testing.assert_close(chain.origin_latent, z0[0], rtol=0, atol=1e-15)


# --- 4. Exact reconstruction for an input-independent eps -------------------------------------


@pytest.mark.parametrize("kind", ["ddim0", "ddim_min", "karras0", "karras_min"])
def test_4_input_independent_eps_reconstructs_exactly(schedule: DiscreteSchedule, z0, kind) -> None:
    """Inversion then Euler on the same sigmas (guidance 1) gives z0 back, up to float64 rounding."""
    end = schedule.sigma_min if kind.endswith("min") else 0.0
    if kind.startswith("ddim"):
        sigmas = schedule.ddim_sigmas(12, end=end)
    else:
        sigmas = karras(9, 0.1, schedule.sigma_max, end=end)
    den = KDenoiser(TimeOnlyEps(tuple(z0.shape[1:])), schedule, text(2))
    chain = invert(z0, den, sigmas)
    rec = plain_euler(den, chain.top.unsqueeze(0), sigmas)
    torch.testing.assert_close(rec, z0, rtol=0, atol=TOL)
    # The source-timestep scheme (model at sigma_{k+1}) does not have this property.
    assert float((chain.nodes[0] - _source_scheme_top(den, z0, sigmas)).abs().max()) > 1e-3


def _source_scheme_top(den: KDenoiser, z0: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    x = z0[0] / float(vp_scale(sigmas[-1]))
    for k in range(len(sigmas) - 2, -1, -1):
        src = max(float(sigmas[k + 1]), 1e-3)
        e = (x - den(x.unsqueeze(0), torch.tensor([src], dtype=torch.float64))[0]) / src
        x = x + float(sigmas[k] - sigmas[k + 1]) * e
    return x


def test_4_library_sampler_reconstructs_with_input_independent_eps(unet8, schedule, z0) -> None:
    """The same through ``sample_euler`` (reference rows in the call, AdaIN off, uncond = cond so CFG
    adds exactly zero): eps ignores its input, so the reference rows cannot matter."""
    sigmas = karras(7, 0.1, schedule.sigma_max)
    eps_model = TimeOnlyEps(tuple(z0.shape[1:]))
    cond = text(2)
    model = UNetEps(unet8, schedule)
    chain = invert(z0, KDenoiser(eps_model, schedule, cond), sigmas)
    with SelfAttentionInjector(unet8) as inj:
        rival = RivalUNet(model, inj, RivalParams(adain=False), Reference(chain, cond, cond))
        rival.model = _EpsOverride(model, eps_model)
        rec = sample_euler(rival, schedule, chain.top.unsqueeze(0), sigmas, cond, cond, 1.0)
    torch.testing.assert_close(rec, z0, rtol=0, atol=TOL)


class _EpsOverride:
    """A UNetEps whose UNet still runs (so the row hooks fire) but whose output is ``eps_model``'s."""

    def __init__(self, model: UNetEps, eps_model: TimeOnlyEps) -> None:
        self.model, self.eps_model = model, eps_model
        self.unet, self.schedule, self.parameterization = model.unet, model.schedule, model.parameterization

    def __call__(self, z: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        out = self.model(z, t, cond)  # reference rows are added and taken off by the row hook
        assert out.shape == z.shape
        return self.eps_model(z, t, cond)


def test_4_reconstruction_error_shrinks_with_steps(schedule: DiscreteSchedule, z0) -> None:
    """For a smooth input-dependent model the official scheme converges (first order) as N grows."""
    model = SmoothEps(tuple(z0.shape[1:]))
    den = KDenoiser(model, schedule, text(2))
    errors = []
    for n in (5, 10, 20, 40, 80):
        sigmas = karras(n, schedule.sigma_min, schedule.sigma_max)
        chain = invert(z0, den, sigmas)
        errors.append(float((plain_euler(den, chain.top.unsqueeze(0), sigmas) - z0).abs().max()))
    assert all(b < 0.75 * a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.1 * errors[0], errors


def test_4_reconstruction_error_shrinks_with_steps_unet(unet8, schedule: DiscreteSchedule, z0) -> None:
    """The same with the random UNet (measured max errors 0.55, 0.28 for N = 4, 16)."""
    den = KDenoiser(UNetEps(unet8, schedule), schedule, text(2))
    errors = []
    for n in (4, 16):
        sigmas = schedule.ddim_sigmas(n)
        chain = invert(z0, den, sigmas)
        errors.append(float((plain_euler(den, chain.top.unsqueeze(0), sigmas) - z0).abs().max()))
    assert errors[1] < 0.75 * errors[0], errors


# --- 5. Chain structure ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet_chain(unet8, schedule, z0):
    den = KDenoiser(UNetEps(unet8, schedule), schedule, text(4))
    sigmas = karras(6, 0.05, schedule.sigma_max)
    return invert(z0, den, sigmas), den, sigmas


def test_5_chain_structure(unet_chain, z0) -> None:
    chain, den, sigmas = unet_chain
    n = len(sigmas) - 1
    assert chain.steps == n
    assert chain.nodes.shape == (n + 1, *z0.shape[1:])
    assert chain.x0.shape == chain.eps.shape == (n, *z0.shape[1:])
    assert torch.equal(chain.sigmas, sigmas)
    assert chain.nodes.dtype == torch.float64
    # The node at sigma = 0 is z0, bit for bit.
    assert float(chain.sigmas[-1]) == 0.0
    assert torch.equal(chain.nodes[-1], z0[0])
    assert torch.equal(chain.origin_latent, z0[0])
    assert torch.equal(chain.top, chain.nodes[0])
    # Node k sits at sigmas[k]: both ends of segment k lie on its line x0_k + sigma * e_k.
    for k in range(n):
        torch.testing.assert_close(chain.nodes[k], chain.x0[k] + sigmas[k] * chain.eps[k], rtol=0, atol=TOL)
        torch.testing.assert_close(chain.nodes[k + 1], chain.x0[k] + sigmas[k + 1] * chain.eps[k], rtol=0, atol=TOL)
    # No randomness: a second build is identical.
    again = invert(z0, den, sigmas)
    for a, b in ((chain.nodes, again.nodes), (chain.x0, again.x0), (chain.eps, again.eps)):
        assert torch.equal(a, b)


def test_5_float32_origin_is_bit_exact(schedule: DiscreteSchedule, z0) -> None:
    z32 = z0.to(torch.float32)
    chain = invert(z32, KDenoiser(TimeOnlyEps(tuple(z0.shape[1:])), schedule, text(1)), [5.0, 1.0, 0.0])
    assert chain.nodes.dtype == torch.float32
    assert torch.equal(chain.origin_latent, z32[0])


def test_5_callback_reports_progress_and_can_interrupt(schedule: DiscreteSchedule, z0) -> None:
    den = KDenoiser(TimeOnlyEps(tuple(z0.shape[1:])), schedule, text(1))
    calls: list[tuple[int, int]] = []
    invert(z0, den, [9.0, 4.0, 1.0, 0.0], callback=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        invert(z0, den, [9.0, 4.0, 1.0, 0.0], callback=stop)


# --- 6. Interpolation between nodes ----------------------------------------------------------


def test_6_nodes_continuity_and_affine_segments(unet_chain) -> None:
    chain, _, sigmas = unet_chain
    n = chain.steps
    for k in range(n + 1):
        assert torch.equal(chain.reference_at(float(sigmas[k])), chain.nodes[k])
        # Continuity: both adjacent segments reach the node.
        if k < n:
            torch.testing.assert_close(chain.x0[k] + sigmas[k] * chain.eps[k], chain.nodes[k], rtol=0, atol=TOL)
        if k > 0:
            torch.testing.assert_close(chain.x0[k - 1] + sigmas[k] * chain.eps[k - 1], chain.nodes[k], rtol=0, atol=TOL)
    g = torch.Generator().manual_seed(2)
    for k in range(n):
        lo, hi = float(sigmas[k + 1]), float(sigmas[k])
        a, b = (lo + (hi - lo) * torch.rand(2, generator=g, dtype=torch.float64)).tolist()
        assert chain.segment(a) == k
        r_a, r_b = chain.reference_at(a), chain.reference_at(b)
        torch.testing.assert_close(r_a, chain.nodes[k + 1] + (a - lo) * chain.eps[k], rtol=0, atol=TOL)
        # Affine in sigma inside the segment.
        torch.testing.assert_close(chain.reference_at((a + b) / 2), (r_a + r_b) / 2, rtol=0, atol=TOL)
        # At a node the sampler is about to traverse the segment below it.
        assert chain.segment(hi) == k


def test_6_float32_schedule_snaps_to_nodes(unet_chain) -> None:
    chain, _, sigmas = unet_chain
    for k in range(len(sigmas)):
        sigma32 = float(torch.tensor(float(sigmas[k]), dtype=torch.float32))
        assert chain.node_index(sigma32) == k
        assert torch.equal(chain.reference_at(sigma32), chain.nodes[k])


# --- 20. Reference off the schedule ----------------------------------------------------------


def test_20_reference_at_second_order_evaluations(unet_chain) -> None:
    chain, _, sigmas = unet_chain
    n = chain.steps
    for i in range(n - 1):
        # Heun: the second evaluation is at the next node, exactly.
        assert torch.equal(chain.reference_at(float(sigmas[i + 1])), chain.nodes[i + 1])
        # DPM2 / DPM++ SDE midpoint: the segment rule of segment i.
        mid = math.sqrt(float(sigmas[i]) * float(sigmas[i + 1]))
        torch.testing.assert_close(chain.reference_at(mid), chain.x0[i] + mid * chain.eps[i], rtol=0, atol=TOL)
        torch.testing.assert_close(
            chain.reference_at(mid),
            chain.nodes[i + 1] + (mid - float(sigmas[i + 1])) * chain.eps[i],
            rtol=0,
            atol=TOL,
        )
    # s_churn: sigma_hat above sigma_0 extrapolates segment 0.
    for gamma in (0.05, 0.5, 3.0):
        hat = float(sigmas[0]) * (1 + gamma)
        assert chain.segment(hat) == 0
        torch.testing.assert_close(chain.reference_at(hat), chain.x0[0] + hat * chain.eps[0], rtol=0, atol=TOL)
        torch.testing.assert_close(
            chain.reference_at(hat), chain.nodes[0] + (hat - float(sigmas[0])) * chain.eps[0], rtol=0, atol=TOL
        )


def test_20_driver_feeds_the_reference_at_every_evaluation_sigma(unet8, schedule, unet_chain) -> None:
    """The reference rows a second-order sampler's evaluations put in the UNet are x_R(sigma) in VP."""
    chain, _, sigmas = unet_chain
    model = UNetEps(unet8, schedule)
    seen: list[torch.Tensor] = []
    handle = unet8.input_blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0][0].clone()))
    s = [float(v) for v in sigmas]
    evaluations = [
        s[0] * 1.3,  # Euler/Heun with s_churn: sigma_hat above sigma_0
        s[0],
        float(torch.tensor(s[1], dtype=torch.float32)),  # Heun's second evaluation, float32 schedule
        math.sqrt(s[1] * s[2]),  # DPM2 midpoint
        math.sqrt(s[2] * s[3]) * 1.01,  # DPM2 a / DPM++ 2S a: somewhere inside a segment
    ]
    z = torch.zeros(1, *chain.top.shape, dtype=torch.float64)
    try:
        with SelfAttentionInjector(unet8) as inj:
            rival = RivalUNet(model, inj, RivalParams(), Reference(chain, text(4), text(4)))
            for sigma in evaluations:
                t = float(schedule.sigma_to_t(sigma))
                rival(z, sigma, t, text(5), ["cond"])
    finally:
        handle.remove()
    assert len(seen) == len(evaluations)
    for sigma, row in zip(evaluations, seen, strict=True):
        expected = chain.reference_at(sigma) * float(vp_scale(sigma))
        torch.testing.assert_close(row, expected, rtol=0, atol=1e-15)
    assert torch.equal(seen[2], chain.nodes[1] * float(vp_scale(evaluations[2])))

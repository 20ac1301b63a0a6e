"""Spec section 5, invariants 14-17: AdaIN, the timestep schedules, the initial latent, inpainting.

float64 throughout; AdaIN identities that are exact in real arithmetic are checked to 1e-12.
The schedule counts run the library's own drivers on the 50-step official grid with a cheap
analytic stand-in for the UNet (its forward records what each call was planned to do).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import make_unet, photo_latent, text
from torch import nn

import rival_ext.session as session_module
from rival_ext import (
    DiscreteSchedule,
    InitLatent,
    KDenoiser,
    Reference,
    RivalParams,
    RivalUNet,
    SelfAttentionInjector,
    SwitchRule,
    UNetEps,
    adain,
    initial_latents,
    invert,
    sample_ddim,
    sample_euler,
    vp_scale,
)
from rival_ext.adain import ADAIN_EPS, adain_denoised
from rival_ext.latent_init import force_keep, inpaint_initial_latent, shuffle_latent
from rival_ext.params import AttentionMode

TOL = 1e-12




def randn(*shape: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift


def official_adain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official rule, one image at a time: flatten (C, -1), unbiased variance, 1e-5 inside."""
    out = []
    for b in range(x.shape[0]):
        f = x[b].reshape(x.shape[1], -1)
        r = target[b if target.shape[0] > 1 else 0].reshape(x.shape[1], -1)
        mu_f, mu_r = f.mean(1, keepdim=True), r.mean(1, keepdim=True)
        s_f, s_r = (f.var(1, keepdim=True) + 1e-5).sqrt(), (r.var(1, keepdim=True) + 1e-5).sqrt()
        out.append(((f - mu_f) / s_f * s_r + mu_r).reshape(x.shape[1:]))
    return torch.stack(out)


# --- 14. AdaIN --------------------------------------------------------------------------------


def test_14_adain_matches_the_official_rule() -> None:
    x, target = randn(3, 4, 8, 8, seed=1, scale=2.0, shift=0.5), randn(1, 4, 8, 8, seed=2, scale=0.3)
    torch.testing.assert_close(adain(x, target), official_adain(x, target), rtol=0, atol=TOL)
    targets = randn(3, 4, 8, 8, seed=3)
    torch.testing.assert_close(adain(x, targets), official_adain(x, targets), rtol=0, atol=TOL)


def test_14_adain_statistics() -> None:
    x = randn(2, 4, 8, 8, seed=4, scale=3.0, shift=-1.0)
    target = randn(1, 4, 8, 8, seed=5, scale=0.02, shift=0.7)  # small variance: the epsilon matters
    out = adain(x, target).flatten(2)
    xf, tf = x.flatten(2), target.flatten(2)
    # Means: exactly the target's.
    torch.testing.assert_close(out.mean(-1), tf.mean(-1).expand(2, -1), rtol=0, atol=TOL)
    # Unbiased variance: var_f / (var_f + eps) * (var_t + eps).
    var_f, var_t = xf.var(-1), tf.var(-1)
    torch.testing.assert_close(out.var(-1), var_f / (var_f + ADAIN_EPS) * (var_t + ADAIN_EPS), rtol=1e-10, atol=0)
    # Hence the std matches the target's to ~1e-5 relative when the variances are of order 1.
    y = adain(x, randn(1, 4, 8, 8, seed=6)).flatten(2)
    ratio = y.std(-1) / randn(1, 4, 8, 8, seed=6).flatten(2).std(-1)
    assert float((ratio - 1).abs().max()) < 1e-5


def test_14_adain_of_a_tensor_to_itself_is_the_identity() -> None:
    t = randn(1, 4, 8, 8, seed=7, scale=1.5, shift=0.2)
    torch.testing.assert_close(adain(t, t), t, rtol=0, atol=TOL)
    ts = randn(3, 4, 8, 8, seed=8)
    torch.testing.assert_close(adain(ts, ts), ts, rtol=0, atol=TOL)


def test_14_adain_is_per_image_and_per_channel() -> None:
    x, target = randn(3, 4, 8, 8, seed=9), randn(1, 4, 8, 8, seed=10)
    out = adain(x, target)
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], adain(x[b : b + 1], target), rtol=0, atol=TOL)
    # Changing one image or one channel leaves the other images and channels alone.
    y = x.clone()
    y[1] *= 5.0
    y[0, 2] = y[0, 2] ** 3
    out_y = adain(y, target)
    torch.testing.assert_close(out_y[2], out[2], rtol=0, atol=TOL)
    for c in (0, 1, 3):
        torch.testing.assert_close(out_y[0, c], out[0, c], rtol=0, atol=TOL)
    assert float((out_y[0, 2] - out[0, 2]).abs().max()) > 1e-3
    # Per-image targets: image b follows target b only.
    targets = randn(3, 4, 8, 8, seed=11)
    for b in range(3):
        torch.testing.assert_close(adain(x, targets)[b], adain(x[b : b + 1], targets[b : b + 1])[0], rtol=0, atol=TOL)


def test_14_adain_is_invariant_to_positive_affine_changes_per_channel() -> None:
    x, target = randn(2, 4, 8, 8, seed=12), randn(1, 4, 8, 8, seed=13)
    g = torch.Generator().manual_seed(14)
    a = 0.5 + 2.5 * torch.rand(2, 4, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(2, 4, 1, 1, generator=g, dtype=torch.float64) * 3
    # Exact without the epsilon...
    torch.testing.assert_close(adain(a * x + b, target, eps=0.0), adain(x, target, eps=0.0), rtol=0, atol=TOL)
    # ...and up to it with the official 1e-5 (relative std change <= eps / (2 var) for var ~ 1).
    diff = float((adain(a * x + b, target) - adain(x, target)).abs().max())
    assert 0 < diff < 1e-4


def test_14_adain_denoised_recomputed_eps_equals_adain_output() -> None:
    """k-diffusion path: eps' = (x - D') / sigma is exactly AdaIN((x - D) / sigma, eps_R)."""
    x, denoised = randn(3, 4, 8, 8, seed=15, scale=5.0), randn(3, 4, 8, 8, seed=16)
    sigma = torch.tensor([4.0, 0.7, 12.0], dtype=torch.float64)
    target = randn(1, 4, 8, 8, seed=17)
    d_new = adain_denoised(denoised, x, sigma, target)
    s = sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close((x - d_new) / s, adain((x - denoised) / s, target), rtol=0, atol=TOL)


def test_14_adain_half_precision_statistics_do_not_overflow() -> None:
    x = (randn(1, 4, 8, 8, seed=18) * 400).half()  # variance ~1.6e5 > float16 max
    target = randn(1, 4, 8, 8, seed=19).half()
    out = adain(x, target)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float().flatten(2).mean(-1), target.float().flatten(2).mean(-1), rtol=0, atol=1e-2)


def test_14_adain_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="AdaIN"):
        adain(randn(2, 4, 8, 8, seed=0), randn(1, 4, 8, 4, seed=0))
    with pytest.raises(ValueError, match="rows"):
        adain(randn(2, 4, 8, 8, seed=0), randn(3, 4, 8, 8, seed=0))
    with pytest.raises(ValueError):
        adain(randn(4, 8, 8, seed=0), randn(4, 8, 8, seed=0))


# --- 15. Schedules on the official 50-step grid ------------------------------------------------


class RecordingUNet(nn.Module):
    """A cheap analytic stand-in for the UNet, called like ldm's; logs (t, rows, attention plan)."""

    def __init__(self, injector: SelfAttentionInjector) -> None:
        super().__init__()
        self.injector = injector
        self.log: list[tuple[float, int, AttentionMode]] = []

    def forward(self, x, timesteps=None, context=None, y=None):
        plan = self.injector.plan
        self.injector.applied = len(self.injector.layers)  # stands for every self-attention layer reading it
        self.log.append((float(timesteps[-1]), x.shape[0], plan.mode if plan else AttentionMode.PLAIN))
        return 0.1 * x + 0.01 * context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)


def run_schedule(unet64, schedule: DiscreteSchedule, params: RivalParams, monkeypatch, sampler: str):
    """Run a 50-step generation; per evaluation t: (mode, reference rows, AdaIN applied)."""
    injector = SelfAttentionInjector(unet64)  # not entered: only its plan is read
    fake = RecordingUNet(injector)
    model = UNetEps(fake, schedule)
    end = schedule.sigma_min
    sigmas = schedule.ddim_sigmas(50, end=end)
    chain = invert(photo_latent(size=4), KDenoiser(model, schedule, text(1)), sigmas)
    fake.log.clear()
    adain_calls: list[int] = []
    real_adain = session_module.adain

    def counting_adain(x, target):
        adain_calls.append(len(fake.log))  # the evaluation that just ran
        return real_adain(x, target)

    monkeypatch.setattr(session_module, "adain", counting_adain)
    rival = RivalUNet(model, injector, params, Reference(chain, text(1), text(2)))
    z = chain.top.unsqueeze(0)
    if sampler == "ddim":
        sample_ddim(rival, schedule, z * float(vp_scale(sigmas[0])), schedule.ddim_timesteps(50), text(3), text(4), 7.0)
    else:
        sample_euler(rival, schedule, z, sigmas, text(3), text(4), 7.0)
    assert len(fake.log) == 50
    adain_set = set(adain_calls)
    return [(round(t), mode, rows - 2, i + 1 in adain_set) for i, (t, rows, mode) in enumerate(fake.log)]


def grid(lo: int, hi: int) -> list[int]:
    """The official grid timesteps from hi down to lo."""
    return [t for t in range(hi, lo - 1, -20)]


@pytest.mark.parametrize(
    ("params", "plain", "reference", "concat", "adain_ts"),
    [
        (RivalParams(), [], grid(621, 981), grid(1, 601), grid(601, 981)),
        (RivalParams(early_plain=960), [981], grid(621, 961), grid(1, 601), grid(601, 981)),
        (
            RivalParams(early_plain=900),
            grid(921, 981),
            grid(621, 901),
            grid(1, 601),
            grid(601, 981),
        ),
        (RivalParams(t_early=400), [], grid(621, 981), grid(1, 601), grid(401, 981)),
        (RivalParams(switch_rule=SwitchRule.PAPER), [], grid(601, 981), grid(1, 581), grid(601, 981)),
    ],
    ids=["variation", "early_plain_960", "editing_900", "controlnet_t_early_400", "paper_rule"],
)
@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_15_schedule_counts(unet64, schedule, monkeypatch, params, plain, reference, concat, adain_ts, sampler):
    log = run_schedule(unet64, schedule, params, monkeypatch, sampler)
    assert [t for t, *_ in log] == schedule.ddim_timesteps(50)
    by_mode = {m: [t for t, mode, *_ in log if mode is m] for m in AttentionMode}
    assert by_mode[AttentionMode.PLAIN] == plain
    assert by_mode[AttentionMode.REFERENCE] == reference
    assert by_mode[AttentionMode.CONCAT] == concat
    assert [t for t, _, _, on in log if on] == adain_ts
    # Reference rows: R_c and R_u while attending, R_c alone for a plain step that needs the AdaIN target.
    for t, mode, ref_rows, on in log:
        expected = 2 if mode is not AttentionMode.PLAIN else (1 if on else 0)
        assert ref_rows == expected, t


def test_15_counts_of_the_spec_table() -> None:
    grid = DiscreteSchedule.stable_diffusion().ddim_timesteps(50)

    def count(params: RivalParams) -> tuple[Counter, int]:
        return Counter(params.attention_mode(t) for t in grid), sum(params.adain_active(t) for t in grid)

    modes, n_adain = count(RivalParams())
    assert (modes[AttentionMode.REFERENCE], modes[AttentionMode.CONCAT], n_adain) == (19, 31, 20)
    modes, _ = count(RivalParams(early_plain=960))
    assert (modes[AttentionMode.PLAIN], modes[AttentionMode.REFERENCE]) == (1, 18)
    modes, _ = count(RivalParams(early_plain=900))
    assert (modes[AttentionMode.PLAIN], modes[AttentionMode.REFERENCE], modes[AttentionMode.CONCAT]) == (4, 15, 31)
    assert count(RivalParams(t_early=400))[1] == 30
    modes, _ = count(RivalParams(switch_rule=SwitchRule.PAPER))
    assert (modes[AttentionMode.REFERENCE], modes[AttentionMode.CONCAT]) == (20, 30)  # one step later
    assert count(RivalParams(adain=False))[1] == 0


def test_15_decisions_depend_only_on_t() -> None:
    """The same t gives the same decision however it was reached (float32 sigmas, a second call)."""
    sch = DiscreteSchedule.stable_diffusion()
    params = RivalParams(early_plain=900)
    for t in sch.ddim_timesteps(50):
        sigma32 = float(torch.tensor(float(sch.sigmas[t]), dtype=torch.float32))
        t_real = float(sch.sigma_to_t(sigma32))
        assert abs(t_real - t) < 1e-3
        assert params.attention_mode(t_real) is params.attention_mode(t) is params.attention_mode(float(t))
        assert params.adain_active(t_real) == params.adain_active(t)
    # Real-valued t between grid points follow the same thresholds.
    assert params.attention_mode(601.5) is AttentionMode.REFERENCE
    assert params.attention_mode(601.0) is AttentionMode.CONCAT
    assert params.adain_active(600.5) and not params.adain_active(600.0)


# --- 16. Initial latent ------------------------------------------------------------------------


def structured(c: int = 4, h: int = 8, w: int = 8) -> torch.Tensor:
    """Channel k holds 1000 k + position: distinct values whose position can be read back."""
    pos = torch.arange(h * w, dtype=torch.float64).reshape(h, w)
    return torch.stack([pos + 1000.0 * k for k in range(c)])


def test_16_shuffle_is_one_permutation_for_all_channels() -> None:
    top = structured()
    out = shuffle_latent(top, seed=123)
    for k in range(4):
        assert torch.equal(out[k].flatten().sort().values, top[k].flatten().sort().values)
        assert torch.equal(out[k] - 1000.0 * k, out[0])  # same permutation as channel 0
    assert not torch.equal(out, top)
    real = photo_latent(size=8)[0]
    shuffled = shuffle_latent(real, seed=5)
    for k in range(4):
        assert torch.equal(shuffled[k].flatten().sort().values, real[k].flatten().sort().values)


def test_16_shuffle_is_seeded() -> None:
    top = structured()
    assert torch.equal(shuffle_latent(top, 7), shuffle_latent(top, 7))
    assert not torch.equal(shuffle_latent(top, 7), shuffle_latent(top, 8))
    state = torch.random.get_rng_state()
    shuffle_latent(top, 9)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not consumed
    for seed in (-1, 2**64 + 3, 0):  # A1111 seeds can be any integer
        assert torch.equal(shuffle_latent(top, seed), shuffle_latent(top, seed))


def test_16_initial_latents_modes() -> None:
    top = structured()
    seeds = [11, 12, 11]
    shuffled = initial_latents(top, seeds, InitLatent.SHUFFLED)
    assert shuffled.shape == (3, *top.shape)
    for b, seed in enumerate(seeds):
        assert torch.equal(shuffled[b], shuffle_latent(top, seed))
    assert torch.equal(shuffled[0], shuffled[2]) and not torch.equal(shuffled[0], shuffled[1])
    inverted = initial_latents(top, seeds, InitLatent.INVERTED)  # editing: the top itself
    for b in range(3):
        assert torch.equal(inverted[b], top)
    assert initial_latents(top, seeds, "noise") is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sgm_multiplier", [False, True])
def test_16_unit_noise_times_sigma0_gives_the_start_within_one_ulp(dtype, sgm_multiplier) -> None:
    """A1111 multiplies the unit noise by sigmas[0] (or sqrt(1 + sigmas[0]^2)): G / s * s is G to 1 ulp."""
    sch = DiscreteSchedule.stable_diffusion()
    start = shuffle_latent(photo_latent(size=16)[0] * 14.6, seed=3).to(dtype)
    for t in (999, 981, 601, 10):
        s = torch.tensor(float(sch.sigmas[t]), dtype=dtype)
        factor = (1 + s**2).sqrt() if sgm_multiplier else s
        unit = start / factor
        back = unit * factor
        ulp = torch.finfo(dtype).eps * start.abs()
        assert bool(((back - start).abs() <= ulp).all()), t


# --- 17. Inpainting ----------------------------------------------------------------------------


def ring_mask(h: int = 8, w: int = 8) -> torch.Tensor:
    """Regenerate a centre square, keep the border."""
    m = torch.zeros(h, w, dtype=torch.bool)
    m[2:6, 3:7] = True
    return m


def test_17_inpaint_initial_latent() -> None:
    top = structured()
    regenerate = ring_mask()
    out = inpaint_initial_latent(top, regenerate, seed=4)
    assert torch.equal(out[:, ~regenerate], top[:, ~regenerate])  # keep region = the chain's top
    for k in range(4):  # regenerate region: a permutation of its own values
        assert torch.equal(out[k][regenerate].sort().values, top[k][regenerate].sort().values)
        assert torch.equal(out[k] - 1000.0 * k, out[0])  # one permutation for all channels
    assert not torch.equal(out, top)
    assert torch.equal(out, inpaint_initial_latent(top, regenerate, seed=4))
    assert not torch.equal(out, inpaint_initial_latent(top, regenerate, seed=5))
    assert torch.equal(inpaint_initial_latent(top, torch.zeros(8, 8, dtype=torch.bool), 1), top)


def test_17_force_keep_touches_only_the_keep_region() -> None:
    x, reference = randn(2, 4, 8, 8, seed=20), randn(4, 8, 8, seed=21)
    regenerate = ring_mask()
    out = force_keep(x, reference, regenerate)
    assert torch.equal(out[:, :, regenerate], x[:, :, regenerate])
    assert torch.equal(out[:, :, ~regenerate], reference[:, ~regenerate].expand(2, -1, -1))
    with pytest.raises(ValueError, match="mask"):
        force_keep(x, reference, regenerate.float())
    with pytest.raises(ValueError, match="mask"):
        force_keep(x, reference, torch.zeros(4, 4, dtype=torch.bool))


@pytest.fixture(scope="module")
def unet8():
    return make_unet(torch.float64, seed=31)


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_17_driver_keeps_the_keep_region_on_the_chain(unet8, schedule, sampler) -> None:
    model = UNetEps(unet8, schedule)
    steps = 4
    end = 0.0 if sampler == "euler" else schedule.sigma_min
    sigmas = schedule.ddim_sigmas(steps, end=end)
    z0 = photo_latent("coffee", size=8)
    chain = invert(z0, KDenoiser(model, schedule, text(1)), sigmas)
    regenerate = ring_mask()
    x_start = inpaint_initial_latent(chain.top, regenerate, seed=9).unsqueeze(0)
    inputs: list[torch.Tensor] = []
    handle = unet8.input_blocks[0].register_forward_pre_hook(lambda _m, args: inputs.append(args[0].clone()))
    params = RivalParams(early_plain=900, t_early=400, adain=True)  # plain, reference-only and concat steps
    try:
        with SelfAttentionInjector(unet8) as inj:
            rival = RivalUNet(model, inj, params, Reference(chain, text(1), text(1)))
            # Start with garbage in the keep region: the driver must overwrite it before every call.
            x_bad = torch.where(regenerate, x_start, torch.full_like(x_start, 9.0))
            cond, uncond = text(5), text(6)
            if sampler == "euler":
                out = sample_euler(rival, schedule, x_bad, sigmas, cond, uncond, 7.0, regenerate=regenerate)
            else:
                z_bad = x_bad * float(vp_scale(sigmas[0]))
                out = sample_ddim(
                    rival, schedule, z_bad, schedule.ddim_timesteps(steps), cond, uncond, 7.0, regenerate=regenerate
                )
    finally:
        handle.remove()
    assert len(inputs) == steps
    keep = ~regenerate
    for i, batch in enumerate(inputs):
        expected = chain.reference_vp(float(sigmas[i]))
        generated = batch[-2:]  # cond and uncond copies of the one image; reference rows come first
        assert torch.equal(generated[:, :, keep], expected[:, keep].expand(2, -1, -1)), i
        for row in batch[:-2]:
            assert torch.equal(row, expected)
    assert torch.equal(out[0][:, keep], chain.origin_latent[:, keep])
    if end == 0.0:
        assert torch.equal(out[0][:, keep], z0[0][:, keep])  # the clean latent itself, bit for bit
    else:
        torch.testing.assert_close(out[0][:, keep], z0[0][:, keep], rtol=0, atol=1e-15)
    assert torch.isfinite(out).all()
    assert float((out[0][:, regenerate] - z0[0][:, regenerate]).abs().max()) > 1e-3


def test_17_all_regenerate_mask_is_no_mask(unet8, schedule) -> None:
    """The keep logic writes nothing when there is nothing to keep."""
    model = UNetEps(unet8, schedule)
    sigmas = schedule.ddim_sigmas(2)
    chain = invert(photo_latent(size=8), KDenoiser(model, schedule, text(1)), sigmas)
    with SelfAttentionInjector(unet8) as inj:
        rival = RivalUNet(model, inj, RivalParams(), Reference(chain, text(1), text(1)))
        everything = torch.ones(8, 8, dtype=torch.bool)
        a = sample_euler(rival, schedule, chain.top.unsqueeze(0), sigmas, text(5), text(6), 7.0, regenerate=everything)
        b = sample_euler(rival, schedule, chain.top.unsqueeze(0), sigmas, text(5), text(6), 7.0)
    assert torch.equal(a, b)

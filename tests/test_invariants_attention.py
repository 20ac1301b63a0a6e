"""Spec section 5, invariants 7-13 and 18: the self-attention injection and the reference rows.

All in float64 with the small random ldm UNet at an 8x8 latent. Attention over duplicated keys,
a permuted key order or a different batch composition is the same function computed along a
different floating-point route: agreement to 1e-12 (measured ~1e-15) is "equal"; "changed" means
a difference of at least 1e-4 on outputs of order 0.1-1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ldm.modules.attention
import pytest
import torch
from conftest import CONTEXT_DIM, make_unet, photo_latent, text
from torch import nn

import rival_ext.attention as attention_module
from rival_ext import (
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
    invert,
    sample_euler,
    vp_scale,
)
from rival_ext.attention import find_self_attention
from rival_ext.conditioning import Role, reference_rows
from rival_ext.params import AttentionMode
from rival_ext.session import RivalSession

EQUAL = 1e-12
CHANGED = 1e-4
TEXT_CHANGED = 1e-9
C, U = Role.COND, Role.UNCOND
T_REFERENCE, T_CONCAT = 800.0, 300.0  # default params: reference-only above t 601, concat below




@pytest.fixture(scope="module")
def unet():
    return make_unet(torch.float64, seed=21)


@pytest.fixture(scope="module")
def model(unet, schedule: DiscreteSchedule) -> UNetEps:
    return UNetEps(unet, schedule)


@pytest.fixture(scope="module")
def chain(model: UNetEps, schedule: DiscreteSchedule) -> InversionChain:
    sigmas = schedule.ddim_sigmas(4)
    return invert(photo_latent("astronaut", size=8), KDenoiser(model, schedule, text(100)), sigmas)


def latents(n: int, seed: int = 0) -> torch.Tensor:
    """n distinct VP latents of the 8x8 latent shape."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g, dtype=torch.float64) * 0.7


def t_vec(t: float, rows: int) -> torch.Tensor:
    return torch.full((rows,), t, dtype=torch.float64)


def sigma_of(schedule: DiscreteSchedule, t: float) -> float:
    return float(schedule.t_to_sigma(t))


@contextmanager
def batch_sizes(unet: nn.Module) -> Iterator[list[int]]:
    """Record the batch size the UNet body really sees (after the row hook added its rows)."""
    sizes: list[int] = []
    handle = unet.input_blocks[0].register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        handle.remove()


def attention(dim: int = 16) -> nn.Module:
    """A random ldm CrossAttention in float64 (scores in the model dtype, as ``make_unet`` sets)."""
    ldm.modules.attention._ATTN_PRECISION = "model"
    torch.manual_seed(5)
    return ldm.modules.attention.CrossAttention(dim, heads=2, dim_head=8).double().eval().requires_grad_(False)


# --- 7. The reference rows are unaffected by the injection -----------------------------------


def test_7_building_block_duplicated_keys_equal_plain_attention() -> None:
    attn = attention()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 20, 16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(attn(x, context=torch.cat([x, x], 1)), attn(x), rtol=0, atol=EQUAL)
    q, k, v = (torch.randn(2, 2, 20, 8, generator=g, dtype=torch.float64) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.testing.assert_close(sdpa(q, torch.cat([k, k], 2), torch.cat([v, v], 2)), sdpa(q, k, v), rtol=0, atol=EQUAL)


@pytest.mark.parametrize("mode", [AttentionMode.REFERENCE, AttentionMode.CONCAT])
def test_7_reference_rows_equal_plain_unet_on_reference_rows_alone(unet, model, mode) -> None:
    """Rows [R_c, R_u, G_c, G_u] with injection: the R rows' outputs equal the plain UNet's on R alone."""
    z_ref = latents(1, seed=1).expand(2, -1, -1, -1)
    z_gen = latents(2, seed=2)
    conds = Conditioning.cat([text(1), text(2), text(3), text(4)])
    rows = reference_rows([C, U], shared=False)
    assert rows.sources.tolist() == [0, 1, 0, 1]
    batch = torch.cat([z_ref, z_gen])
    with SelfAttentionInjector(unet) as inj, inj.planned(AttentionPlan(mode, rows.sources)):
        out = model(batch, t_vec(500.0, 4), conds)
    plain_ref = model(z_ref, t_vec(500.0, 2), conds.rows(slice(0, 2)))
    torch.testing.assert_close(out[:2], plain_ref, rtol=0, atol=EQUAL)
    for i in range(2):  # also each reference row alone (batch 1)
        alone = model(z_ref[i : i + 1], t_vec(500.0, 1), conds.rows(slice(i, i + 1)))
        torch.testing.assert_close(out[i : i + 1], alone, rtol=0, atol=EQUAL)
    # The generated rows did change: the test would see a wrongly routed reference row.
    plain_gen = model(z_gen, t_vec(500.0, 2), conds.rows(slice(2, 4)))
    assert float((out[2:] - plain_gen).abs().max()) > CHANGED


@pytest.mark.parametrize("t", [T_REFERENCE, T_CONCAT])
def test_7_driver_reference_cond_eps_equals_plain_unet(unet, model, chain, schedule, t) -> None:
    sigma = sigma_of(schedule, t)
    ref = Reference(chain, text(1), text(2))
    with SelfAttentionInjector(unet) as inj:
        rival = RivalUNet(model, inj, RivalParams(), ref)
        _, eps_ref = rival(latents(4, seed=3), sigma, t, Conditioning.cat([text(3), text(4)] * 2), [C, U, C, U])
    z_ref = chain.reference_vp(sigma).unsqueeze(0)
    torch.testing.assert_close(eps_ref, model(z_ref, t_vec(t, 1), text(1)), rtol=0, atol=EQUAL)


# --- 8. Concat order is irrelevant -----------------------------------------------------------


def test_8_concat_order_building_block() -> None:
    attn = attention()
    g = torch.Generator().manual_seed(2)
    h_ref, h_gen = torch.randn(2, 2, 20, 16, generator=g, dtype=torch.float64)
    a = attn(h_gen, context=torch.cat([h_ref, h_gen], 1))
    b = attn(h_gen, context=torch.cat([h_gen, h_ref], 1))
    torch.testing.assert_close(a, b, rtol=0, atol=EQUAL)
    assert float((a - attn(h_gen)).abs().max()) > CHANGED


def test_8_concat_order_irrelevant_in_the_unet(unet, model, chain, schedule, monkeypatch) -> None:
    sigma = sigma_of(schedule, T_CONCAT)
    z = latents(2, seed=4)
    cond = Conditioning.cat([text(3), text(4)])

    def run() -> torch.Tensor:
        with SelfAttentionInjector(unet) as inj:
            rival = RivalUNet(model, inj, RivalParams(), Reference(chain, text(1), text(2)))
            return rival(z, sigma, T_CONCAT, cond, [C, U])[0]

    official_order = run()
    original = attention_module.injected_context

    def own_first(own: torch.Tensor, plan: AttentionPlan, *rest: object) -> torch.Tensor:
        joined = original(own, plan, *rest)
        if plan.mode is AttentionMode.CONCAT:
            n = own.shape[1]
            joined = torch.cat([joined[:, n:], joined[:, :n]], dim=1)  # [own, reference]
        return joined

    monkeypatch.setattr(attention_module, "injected_context", own_first)
    torch.testing.assert_close(run(), official_order, rtol=0, atol=EQUAL)


# --- 9. Identity cases -----------------------------------------------------------------------


@pytest.mark.parametrize("t", [T_REFERENCE, T_CONCAT])
def test_9_row_identical_to_reference_gets_the_plain_output(unet, model, chain, schedule, t) -> None:
    sigma = sigma_of(schedule, t)
    z_ref = chain.reference_vp(sigma).unsqueeze(0)
    ref = Reference(chain, text(1), text(2))
    with SelfAttentionInjector(unet) as inj:
        rival = RivalUNet(model, inj, RivalParams(), ref)
        eps, _ = rival(torch.cat([z_ref, z_ref]), sigma, t, Conditioning.cat([text(1), text(2)]), [C, U])
        # Control: the same row with another latent is changed by the injection.
        other, _ = rival(latents(1, seed=9), sigma, t, text(1), [C])
    plain = model(torch.cat([z_ref, z_ref]), t_vec(t, 2), Conditioning.cat([text(1), text(2)]))
    torch.testing.assert_close(eps, plain, rtol=0, atol=EQUAL)
    assert float((other - model(latents(1, seed=9), t_vec(t, 1), text(1))).abs().max()) > CHANGED


def test_9_editing_with_identical_prompt_follows_the_reference_path(unet, model, schedule) -> None:
    """Editing start, generated prompt = reference prompt, guidance 1, no AdaIN: when the reference
    branch is the plain sampling path itself, the generated branch reproduces it step by step."""
    sigmas = schedule.ddim_sigmas(5)
    prompt = text(1)
    den = KDenoiser(model, schedule, prompt)
    x = (latents(1, seed=5) / float(vp_scale(sigmas[0])))[0]
    nodes, x0s, epss = [x], [], []
    for k in range(len(sigmas) - 1):  # plain Euler, recorded as a chain
        s_k = float(sigmas[k])
        e = (x - den(x.unsqueeze(0), torch.tensor([s_k], dtype=torch.float64))[0]) / s_k
        epss.append(e)
        x0s.append(x - s_k * e)
        x = x + float(sigmas[k + 1] - sigmas[k]) * e
        nodes.append(x)
    path = InversionChain(sigmas, torch.stack(nodes), torch.stack(x0s), torch.stack(epss))
    modes: list[object] = []
    attn1 = find_self_attention(unet)[0].module
    with SelfAttentionInjector(unet) as inj:
        handle = attn1.register_forward_pre_hook(lambda _m, _a: modes.append(inj.plan and inj.plan.mode))
        try:
            rival = RivalUNet(model, inj, RivalParams(adain=False), Reference(path, prompt, prompt))
            out = sample_euler(rival, schedule, path.top.unsqueeze(0), sigmas, prompt, prompt, 1.0)
        finally:
            handle.remove()
    assert set(modes) == {AttentionMode.REFERENCE, AttentionMode.CONCAT}  # the injection was on
    torch.testing.assert_close(out[0], path.origin_latent, rtol=0, atol=1e-10)


# --- 10 / 11. Batch composition and role routing ---------------------------------------------


@pytest.fixture(scope="module")
def rows4() -> tuple[torch.Tensor, list[Conditioning], list[Role]]:
    """Generated rows A, B (cond; B shares A's latent with another text: an AND sub-prompt), C, D (uncond)."""
    z = latents(3, seed=6)
    z = torch.cat([z[:1], z])
    return z, [text(11), text(12), text(13, tokens=154), text(14)], [C, C, U, U]


def call_rows(rival: RivalUNet, sigma: float, t: float, rows, order: list[int]) -> dict[int, torch.Tensor]:
    z, texts, roles = rows
    eps, _ = rival(z[order], sigma, t, Conditioning.cat([texts[i] for i in order]), [roles[i] for i in order])
    return {i: eps[j] for j, i in enumerate(order)}


@pytest.mark.parametrize(
    ("t", "params"),
    [
        (T_REFERENCE, RivalParams()),
        (T_CONCAT, RivalParams()),
        (990.0, RivalParams(early_plain=960.0)),  # plain attention, AdaIN target row only
    ],
)
@pytest.mark.parametrize("shared", [False, True])
def test_10_row_output_independent_of_batch_composition(unet, model, chain, schedule, rows4, t, params, shared):
    sigma = sigma_of(schedule, t)
    ref = Reference(chain, text(1), text(1) if shared else text(2))
    with SelfAttentionInjector(unet) as inj:
        rival = RivalUNet(model, inj, params, ref)
        together = call_rows(rival, sigma, t, rows4, [0, 1, 2, 3])
        reordered = call_rows(rival, sigma, t, rows4, [3, 1, 2, 0])
        cond_only = call_rows(rival, sigma, t, rows4, [0, 1])
        uncond_only = call_rows(rival, sigma, t, rows4, [2, 3])
        singles = {i: call_rows(rival, sigma, t, rows4, [i])[i] for i in range(4)}
    separate = {**cond_only, **uncond_only}
    for i in range(4):
        for other in (reordered, separate, singles):
            torch.testing.assert_close(other[i], together[i], rtol=0, atol=EQUAL)


def test_10_split_calls_of_one_evaluation_equal_one_call(unet, model, chain, schedule, rows4) -> None:
    """A1111 may split one evaluation's rows over several UNet calls; the row cursor routes them."""
    z, texts, roles = rows4
    t = T_REFERENCE
    sigma = sigma_of(schedule, t)
    ref = Reference(chain, text(1), text(2))
    params = RivalParams()
    cond = Conditioning.cat(texts)
    with SelfAttentionInjector(unet) as inj:
        hook = RivalSession(unet, params, ref, injector=inj)
        with hook:
            ev = hook.begin(sigma, t, roles)
            whole = model(z, t_vec(t, 4), cond)
            eps_ref_whole = ev.eps_ref
            ev = hook.begin(sigma, t, roles)
            parts = [model(z[a:b], t_vec(t, b - a), Conditioning.cat(texts[a:b])) for a, b in ((0, 1), (1, 3), (3, 4))]
            eps_ref_parts = ev.eps_ref
            hook.end()
            foreign = model(z[:2], t_vec(t, 2), cond.rows(slice(0, 2)))  # no evaluation: left alone
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=EQUAL)
    torch.testing.assert_close(eps_ref_parts, eps_ref_whole, rtol=0, atol=EQUAL)
    torch.testing.assert_close(foreign, model(z[:2], t_vec(t, 2), cond.rows(slice(0, 2))), rtol=0, atol=0)


@pytest.mark.parametrize("shared", [False, True])
def test_10_reference_bank_equals_in_batch(unet, model, chain, schedule, shared) -> None:
    """The feature cache (reference pass recorded once, then replayed from a bank) gives the
    in-batch outputs, and replayed calls are exactly plain-sized."""
    from rival_ext.feature_cache import FeatureCache

    ref = Reference(chain, text(1), text(1) if shared else text(2))
    params = RivalParams(early_plain=960.0)
    sigmas = schedule.ddim_sigmas(4)  # t 751 (reference-only), 501, 251, 1 (concat)
    start = latents(2, seed=15) * float(sigmas[0])
    cond, uncond = Conditioning.cat([text(3), text(5)]), Conditioning.cat([text(4), text(4)])
    cache = FeatureCache(max_bytes=1 << 30)
    with SelfAttentionInjector(unet) as inj:
        in_batch = sample_euler(RivalUNet(model, inj, params, ref), schedule, start, sigmas, cond, uncond, 7.0)
        banked = RivalUNet(model, inj, params, ref, features=cache)
        recorded = sample_euler(banked, schedule, start, sigmas, cond, uncond, 7.0)
        with batch_sizes(unet) as sizes:
            replayed = sample_euler(banked, schedule, start, sigmas, cond, uncond, 7.0)
        # A plain-attention evaluation that needs only the AdaIN target (t 990 > early_plain + 1).
        sigma = sigma_of(schedule, 990.0)
        direct = RivalUNet(model, inj, params, ref)(start * 0.1, sigma, 990.0, cond, [C, C])
        banked(start * 0.1, sigma, 990.0, cond, [C, C])
        with batch_sizes(unet) as plain_sizes:
            again = banked(start * 0.1, sigma, 990.0, cond, [C, C])
    assert sizes == [4] * 4 and plain_sizes == [2]
    torch.testing.assert_close(recorded, in_batch, rtol=0, atol=EQUAL)
    torch.testing.assert_close(replayed, in_batch, rtol=0, atol=EQUAL)
    torch.testing.assert_close(again[0], direct[0], rtol=0, atol=EQUAL)
    torch.testing.assert_close(again[1], direct[1], rtol=0, atol=EQUAL)


@pytest.mark.parametrize("t", [T_REFERENCE, T_CONCAT])
def test_11_role_routing(unet, model, chain, schedule, rows4, t) -> None:
    sigma = sigma_of(schedule, t)
    outputs = {}
    with SelfAttentionInjector(unet) as inj:
        for name, ref in {
            "base": Reference(chain, text(1), text(2)),
            "new_cond_text": Reference(chain, text(3), text(2)),
            "new_uncond_text": Reference(chain, text(1), text(4)),
        }.items():
            outputs[name] = call_rows(RivalUNet(model, inj, RivalParams(), ref), sigma, t, rows4, [0, 1, 2, 3])
    base = outputs["base"]
    for i in (0, 1):  # cond rows read R_c
        torch.testing.assert_close(outputs["new_uncond_text"][i], base[i], rtol=0, atol=EQUAL)
        assert float((outputs["new_cond_text"][i] - base[i]).abs().max()) > TEXT_CHANGED
    for i in (2, 3):  # uncond rows read R_u
        torch.testing.assert_close(outputs["new_cond_text"][i], base[i], rtol=0, atol=EQUAL)
        assert float((outputs["new_uncond_text"][i] - base[i]).abs().max()) > TEXT_CHANGED


def test_11_shared_detection(chain) -> None:
    a = text(1)
    assert Reference(chain, a, a).shared
    assert Reference(chain, a, Conditioning(a.context.clone())).shared  # equal values, distinct tensors
    assert not Reference(chain, a, text(2)).shared
    assert not Reference(chain, a, Conditioning(a.context.repeat(1, 2, 1))).shared
    assert not Reference(chain, a, Conditioning(a.context, torch.zeros(1, 8, dtype=torch.float64))).shared


@pytest.mark.parametrize("t", [T_REFERENCE, T_CONCAT])
def test_11_one_shared_reference_row_equals_two_equal_rows(unet, model, chain, schedule, t) -> None:
    """Null prompt: one shared reference row gives what two (equal) rows R_c, R_u give.

    The two-row layout is built by hand (the library always shares equal texts): batch
    [R, R, G_c, G_u] with texts [P, P, ...] and sources [0, 1, 0, 1].
    """
    sigma = sigma_of(schedule, t)
    prompt = text(1)
    z_gen = latents(2, seed=7)
    gen_cond = Conditioning.cat([text(3), text(4)])
    with SelfAttentionInjector(unet) as inj, batch_sizes(unet) as sizes:
        rival = RivalUNet(model, inj, RivalParams(), Reference(chain, prompt, Conditioning(prompt.context.clone())))
        shared_out, shared_ref = rival(z_gen, sigma, t, gen_cond, [C, U])
        two = reference_rows([C, U], shared=False)
        z_ref = chain.reference_vp(sigma).unsqueeze(0).expand(2, -1, -1, -1)
        mode = RivalParams().attention_mode(t)
        with inj.planned(AttentionPlan(mode, two.sources)):
            two_out = model(torch.cat([z_ref, z_gen]), t_vec(t, 4), Conditioning.cat([prompt, prompt, gen_cond]))
    assert sizes == [3, 4]  # one shared reference row, then the hand-made two
    torch.testing.assert_close(shared_out, two_out[2:], rtol=0, atol=EQUAL)
    torch.testing.assert_close(shared_ref, two_out[:1], rtol=0, atol=EQUAL)
    torch.testing.assert_close(two_out[0], two_out[1], rtol=0, atol=EQUAL)


# --- 12. Only attn1 changes ------------------------------------------------------------------


def test_12_only_attn1_changes(unet, model, chain, schedule) -> None:
    """Every module except attn1 computes the same function of its inputs with the hooks on; the
    pre-hooks sit on attn1 only and change only its context."""
    t = T_CONCAT
    sigma = sigma_of(schedule, t)
    attn1 = {id(layer.module) for layer in find_self_attention(unet)}
    attn2 = [m for m in unet.modules() if isinstance(m, ldm.modules.attention.BasicTransformerBlock)]
    assert len(attn1) == len(attn2) > 0
    records: list[tuple[nn.Module, tuple, dict, torch.Tensor]] = []
    originals: dict[int, torch.Tensor] = {}

    def record(module, args, kwargs, output):
        records.append((module, args, dict(kwargs), output))

    def original_input(module, args, kwargs):
        originals[id(module)] = args[0]

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in unet.modules() if m is not unet]
    handles += [
        layer.module.register_forward_pre_hook(original_input, with_kwargs=True) for layer in find_self_attention(unet)
    ]  # registered before the injector's: sees the attn1 input as the block passed it
    before = {name: dict(m._forward_pre_hooks) for name, m in unet.named_modules()}
    try:
        with SelfAttentionInjector(unet) as inj:
            hooked = {name for name, m in unet.named_modules() if len(m._forward_pre_hooks) > len(before[name])}
            rival = RivalUNet(model, inj, RivalParams(), Reference(chain, text(1), text(2)))
            rival(latents(2, seed=8), sigma, t, Conditioning.cat([text(3), text(4)]), [C, U])
    finally:
        for h in handles:
            h.remove()
    assert hooked == {layer.name for layer in find_self_attention(unet)}
    containers = {
        id(m)
        for m in unet.modules()
        if m is not unet and any(id(d) in attn1 for d in m.modules()) and id(m) not in attn1
    }
    checked_attn2 = 0
    for module, args, kwargs, output in records:
        if id(module) in containers:  # blocks around attn1: their output changes through attn1 only
            continue
        again = module(*args, **kwargs)  # no hooks now: the module's own function
        assert torch.equal(again, output), type(module).__name__
        if id(module) in attn1:
            # The injected context: reference rows read [own; own], generated rows [R; own].
            context = kwargs["context"]
            assert context.shape[1] == 2 * args[0].shape[1]
            plain = module(originals[id(module)])
            torch.testing.assert_close(output[:2], plain[:2], rtol=0, atol=EQUAL)
            assert float((output[2:] - plain[2:]).abs().max()) > 0
        elif any(module is block.attn2 for block in attn2):
            checked_attn2 += 1
            assert kwargs["context"].shape[0] == args[0].shape[0]  # the text context, untouched
    assert checked_attn2 == len(attn2)


def test_12_attn2_identical_for_identical_inputs_while_injecting(unet) -> None:
    blocks = [m for m in unet.modules() if isinstance(m, ldm.modules.attention.BasicTransformerBlock)]
    g = torch.Generator().manual_seed(3)
    with SelfAttentionInjector(unet) as inj:
        for block in blocks:
            dim = block.attn2.to_q.in_features
            x = torch.randn(2, 16, dim, generator=g, dtype=torch.float64)
            ctx = torch.randn(2, 77, CONTEXT_DIM, generator=g, dtype=torch.float64)
            with inj.planned(AttentionPlan(AttentionMode.CONCAT, torch.tensor([0, 0]))):
                hooked2, hooked1 = block.attn2(x, context=ctx), block.attn1(x, context=None)
            assert torch.equal(hooked2, block.attn2(x, context=ctx))
            assert not torch.equal(hooked1[1], block.attn1(x)[1])  # attn1 of row 1 did change


def test_12_all_features_off_is_a_plain_generation(unet, model, chain, schedule) -> None:
    """AdaIN off and plain attention at every evaluation: no reference row joins any UNet call and
    the result is bit-identical to a plain CFG Euler run.

    (Evaluations at t <= 1 are never plain with early_plain in [0, 1000] under the official rule;
    the schedule here stays above t = 1, see the report.)"""
    params = RivalParams(adain=False, early_plain=0.0)
    ts = [901, 701, 501, 301, 101]
    sigmas = torch.cat([schedule.sigmas[ts], torch.zeros(1, dtype=torch.float64)])
    x_start = latents(2, seed=10) * float(sigmas[0])
    cond, uncond = Conditioning.cat([text(3), text(5)]), Conditioning.cat([text(4), text(4)])
    with SelfAttentionInjector(unet) as inj, batch_sizes(unet) as sizes:
        rival = RivalUNet(model, inj, params, Reference(chain, text(1), text(2)))
        out = sample_euler(rival, schedule, x_start, sigmas, cond, uncond, 7.0)
    assert sizes == [4] * len(ts)
    x = x_start
    for i in range(len(ts)):  # the plain loop, in the same floating-point order as the driver
        sigma = float(sigmas[i])
        t = float(schedule.sigma_to_t(sigma))
        eps = model(torch.cat([x, x]) * float(vp_scale(sigma)), t_vec(t, 4), Conditioning.cat([cond, uncond]))
        guided = eps[2:] + 7.0 * (eps[:2] - eps[2:])
        x = x + float(sigmas[i + 1] - sigmas[i]) * guided
    assert torch.equal(out, x * float(vp_scale(sigmas[-1])))


# --- 13. Clean removal -----------------------------------------------------------------------


def snapshot(unet: nn.Module) -> dict[str, tuple]:
    return {
        name: (
            dict(m._forward_pre_hooks),
            set(m._forward_pre_hooks_with_kwargs),
            dict(m._forward_hooks),
            m.__dict__.get("forward"),
        )
        for name, m in unet.named_modules()
    }


def probe(model: UNetEps) -> torch.Tensor:
    return model(latents(3, seed=12), t_vec(400.0, 3), Conditioning.cat([text(1), text(2), text(3)]))


class Boom(Exception):
    pass


@pytest.mark.parametrize("how", ["normal", "exception_in_body", "error_in_unet_call", "keyboard_interrupt"])
def test_13_clean_removal(unet, model, chain, schedule, how) -> None:
    before, out_before = snapshot(unet), probe(model)
    sigma = sigma_of(schedule, T_CONCAT)
    z = latents(2, seed=13)
    cond = Conditioning.cat([text(3), text(4)])
    inj = SelfAttentionInjector(unet)
    try:
        with inj:
            assert inj.installed
            rival = RivalUNet(model, inj, RivalParams(), Reference(chain, text(1), text(2)))
            rival(z, sigma, T_CONCAT, cond, [C, U])
            if how == "exception_in_body":
                raise Boom
            if how == "keyboard_interrupt":
                raise KeyboardInterrupt
            if how == "error_in_unet_call":  # a plan for another row count: the hook raises
                with inj.planned(AttentionPlan(AttentionMode.CONCAT, torch.tensor([0, 0, 0, 0, 0]))):
                    model(z, t_vec(T_CONCAT, 2), cond)
    except (Boom, KeyboardInterrupt, RuntimeError):
        assert how != "normal"
    assert not inj.installed and inj.plan is None
    after = snapshot(unet)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], name
    for layer in inj.layers:  # the attention layers run their class's forward
        assert "forward" not in layer.module.__dict__
    assert torch.equal(probe(model), out_before)


def test_13_error_inside_a_unet_call_leaves_no_stale_plan(unet, model, chain, schedule) -> None:
    """An exception in the middle of a RIVAL UNet call (another extension's hook, out of memory)
    must not leave that call's attention plan behind for the next UNet call."""
    out_before = probe(model)

    def boom(_module, _args):
        raise Boom

    with SelfAttentionInjector(unet) as inj:
        rival = RivalUNet(model, inj, RivalParams(), Reference(chain, text(1), text(2)))
        handle = unet.output_blocks[1].register_forward_pre_hook(boom)
        try:
            with pytest.raises(Boom):
                rival(latents(2, seed=13), sigma_of(schedule, T_CONCAT), T_CONCAT, text(3, rows=2), [C, U])
        finally:
            handle.remove()
        assert inj.plan is None
        assert torch.equal(probe(model), out_before)  # a plain call, hooks still installed
    assert torch.equal(probe(model), out_before)


def test_13_hooks_with_no_plan_change_nothing_and_cannot_double_install(unet, model) -> None:
    out_before = probe(model)
    inj = SelfAttentionInjector(unet)
    with inj:
        assert torch.equal(probe(model), out_before)
        with pytest.raises(RuntimeError), inj:
            pass
        assert inj.installed  # the failed re-entry did not remove the live hooks
        assert sum(len(layer.module._forward_pre_hooks) for layer in inj.layers) == len(inj.layers)
        with pytest.raises(Boom), inj.planned(AttentionPlan(AttentionMode.CONCAT, torch.tensor([0]))):
            raise Boom
        assert inj.plan is None
    assert sum(len(layer.module._forward_pre_hooks) for layer in inj.layers) == 0


# --- 18. The AdaIN target --------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_18_adain_target_is_the_reference_cond_row(unet, model, chain, schedule, rows4, shared) -> None:
    t = 700.0  # reference-only attention, AdaIN on
    sigma = sigma_of(schedule, t)
    ref_cond, ref_uncond = text(1), (text(1) if shared else text(2))
    z_ref = chain.reference_vp(sigma).unsqueeze(0)
    expected = model(z_ref, t_vec(t, 1), ref_cond)
    z, texts, roles = rows4
    targets = []
    with SelfAttentionInjector(unet) as inj:
        rival = RivalUNet(model, inj, RivalParams(), Reference(chain, ref_cond, ref_uncond))
        for order in ([0, 1, 2, 3], [3, 2, 1, 0], [0], [2], [3, 2]):  # incl. uncond-only calls
            targets.append(
                rival(z[order], sigma, t, Conditioning.cat([texts[i] for i in order]), [roles[i] for i in order])[1]
            )
    for target in targets:
        torch.testing.assert_close(target, expected, rtol=0, atol=EQUAL)
    if not shared:
        assert float((expected - model(z_ref, t_vec(t, 1), ref_uncond)).abs().max()) > CHANGED


def test_18_guided_eps_independent_of_number_and_order_of_images(unet, model, chain, schedule) -> None:
    t = 700.0
    sigma = sigma_of(schedule, t)
    z = latents(3, seed=14)
    conds = [text(20), text(21), text(22)]
    uncond = text(23)
    with SelfAttentionInjector(unet) as inj:
        rival = RivalUNet(model, inj, RivalParams(), Reference(chain, text(1), text(2)))
        alone = rival.guided_eps(z[1:2], sigma, t, conds[1], uncond, 5.0)
        three = rival.guided_eps(z[[2, 1, 0]], sigma, t, Conditioning.cat(conds[::-1]), uncond.repeat(3), 5.0)
        eps, eps_ref = rival(torch.cat([z[1:2]] * 2), sigma, t, Conditioning.cat([conds[1], uncond]), [C, U])
    torch.testing.assert_close(three[1:2], alone, rtol=0, atol=EQUAL)
    torch.testing.assert_close(alone, adain(eps[1:] + 5.0 * (eps[:1] - eps[1:]), eps_ref), rtol=0, atol=EQUAL)
    # The target's per-channel means are what the guided eps now has.
    torch.testing.assert_close(alone.mean((-1, -2)), eps_ref.mean((-1, -2)), rtol=0, atol=EQUAL)

"""Bad input is refused with a ValueError that names the problem; odd but valid input works.

Also property tests (hypothesis): parameters, reference images of any size and mode, and random
strictly decreasing sigma schedules never raise anything but ValueError and give finite results.
"""

from __future__ import annotations

import math

import ldm.modules.attention
import numpy as np
import pytest
import torch
from conftest import CONTEXT_DIM, make_unet, text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rival_ext import (
    PRESETS,
    AttentionMode,
    Conditioning,
    DiscreteSchedule,
    InitLatent,
    Reference,
    ReferencePrompt,
    RivalParams,
    RivalUNet,
    SelfAttentionInjector,
    SwitchRule,
    UNetEps,
    check_schedule,
    invert,
    preset,
)
from rival_ext.conditioning import Role, reference_rows
from rival_ext.image import prepare_reference, to_rgb
from rival_ext.latent_init import latent_mask

C, U = Role.COND, Role.UNCOND




class GaussianDenoiser:
    """The exact denoiser for x0 ~ N(0, I): D(x; sigma) = x / (1 + sigma^2). Cheap and smooth."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x / (1 + sigma.to(x.dtype).reshape(-1, 1, 1, 1) ** 2)


def z0(dtype=torch.float64) -> torch.Tensor:
    return torch.linspace(-1, 1, 4 * 8 * 8, dtype=dtype).reshape(1, 4, 8, 8)


# --- invert / schedules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sigmas", "message"),
    [
        ([5.0], "at least 2"),
        ([], "at least 2"),
        ([5.0, 5.0, 0.0], "strictly decreasing"),
        ([1.0, 5.0, 0.0], "strictly decreasing"),
        ([5.0, 1.0, 2.0], "strictly decreasing"),
        ([5.0, float("nan"), 0.0], "NaN"),
        ([float("inf"), 1.0, 0.0], "inf"),
        ([5.0, 1.0, -0.1], "negative"),
    ],
)
def test_invert_rejects_bad_schedules(sigmas, message) -> None:
    with pytest.raises(ValueError, match=message):
        invert(z0(), GaussianDenoiser(), sigmas)
    with pytest.raises(ValueError, match=message):
        check_schedule(torch.tensor(sigmas, dtype=torch.float64))


@pytest.mark.parametrize(
    ("latent", "message"),
    [
        (z0().clone().index_fill_(3, torch.tensor([2]), float("nan")), "NaN"),
        (z0().clone().index_fill_(3, torch.tensor([2]), float("inf")), "inf"),
        (z0().repeat(2, 1, 1, 1), "shape"),
        (z0()[0, 0], "shape"),
        (z0().unsqueeze(0), "shape"),
        (torch.zeros(1, 4, 8, 8, dtype=torch.int64), "float"),
        (torch.zeros(1, 4, 8, 8, dtype=torch.uint8), "float"),
        (torch.zeros(1, 4, 8, 8, dtype=torch.bool), "float"),
    ],
)
def test_invert_rejects_bad_latents(latent, message) -> None:
    with pytest.raises(ValueError, match=message):
        invert(latent, GaussianDenoiser(), [5.0, 1.0, 0.0])


def test_invert_accepts_a_3d_latent_and_any_float_dtype() -> None:
    a = invert(z0()[0], GaussianDenoiser(), [5.0, 1.0, 0.0])
    assert a.nodes.shape == (3, 4, 8, 8)
    b = invert(z0(torch.float16), GaussianDenoiser(), [5.0, 1.0, 0.0])
    assert b.nodes.dtype == torch.float32 and torch.isfinite(b.nodes).all()


def test_invert_reports_a_diverging_model() -> None:
    def nan_model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x * float("nan")

    with pytest.raises(ValueError, match="NaN"):
        invert(z0(), nan_model, [5.0, 1.0, 0.0])


def test_discrete_schedule_validation() -> None:
    with pytest.raises(ValueError):
        DiscreteSchedule(torch.tensor([0.9]))
    with pytest.raises(ValueError):
        DiscreteSchedule(torch.tensor([0.5, 0.9]))  # increasing
    with pytest.raises(ValueError):
        DiscreteSchedule(torch.tensor([1.5, 0.9]))
    with pytest.raises(ValueError):
        DiscreteSchedule(torch.tensor([0.9, float("nan")]))
    sch = DiscreteSchedule.stable_diffusion()
    for steps in (0, 1001, -3):
        with pytest.raises(ValueError, match="steps"):
            sch.ddim_timesteps(steps)
    assert sch.ddim_timesteps(50)[:3] == [981, 961, 941] and sch.ddim_timesteps(50)[-1] == 1
    assert len(sch.ddim_sigmas(30)) == 31 and float(sch.ddim_sigmas(30)[-1]) == 0.0


def test_unet_eps_rejects_unknown_parameterization() -> None:
    with pytest.raises(ValueError, match="parameterization"):
        UNetEps(torch.nn.Identity(), DiscreteSchedule.stable_diffusion(), "x0")


# --- RivalParams / presets ---------------------------------------------------------------------


NUMBER_FIELDS = ("t_align", "t_early", "early_plain")


@pytest.mark.parametrize("name", NUMBER_FIELDS)
@pytest.mark.parametrize(
    "value", [-1, -1e-9, 1000.5, 1e9, float("nan"), float("inf"), -float("inf"), True, False, "600", None, [600], 600j]
)
def test_params_reject_bad_numbers(name, value) -> None:
    with pytest.raises(ValueError, match=name):
        RivalParams(**{name: value})


@pytest.mark.parametrize("name", NUMBER_FIELDS)
def test_params_accept_the_range_ends(name) -> None:
    for value in (0, 1000, 0.0, 1000.0, np.float64(500.0), 250):
        p = RivalParams(**{name: value})
        assert type(getattr(p, name)) is float and getattr(p, name) == float(value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("reference_prompt", "bogus"),
        ("reference_prompt", 3),
        ("reference_prompt", None),
        ("init_latent", "random"),
        ("init_latent", InitLatent),
        ("switch_rule", "papers"),
        ("switch_rule", AttentionMode.PLAIN),
        ("adain", "yes"),
        ("adain", 1),
        ("adain", None),
        ("custom_prompt", 3),
        ("custom_prompt", None),
    ],
)
def test_params_reject_bad_choices(name, value) -> None:
    with pytest.raises(ValueError, match=name):
        RivalParams(**{name: value})


def test_params_accept_enum_values_as_strings() -> None:
    p = RivalParams(reference_prompt="custom", custom_prompt="a cat", init_latent="inverted", switch_rule="paper")
    assert p.reference_prompt is ReferencePrompt.CUSTOM
    assert p.init_latent is InitLatent.INVERTED
    assert p.switch_rule is SwitchRule.PAPER
    assert p.reference_text("a dog") == "a cat"
    assert RivalParams(reference_prompt="prompt").reference_text("a dog") == "a dog"
    assert RivalParams().reference_text("a dog") == ""


def test_params_with_values_validates() -> None:
    p = RivalParams()
    assert p.with_values(t_align=500).t_align == 500.0
    with pytest.raises(ValueError, match="unknown"):
        p.with_values(t_alig=500)
    with pytest.raises(ValueError, match="t_early"):
        p.with_values(t_early=-5)


def test_presets() -> None:
    with pytest.raises(ValueError, match="unknown RIVAL preset 'x'") as info:
        preset("x")
    for name in PRESETS:
        assert name in str(info.value)
        assert preset(name).name == name
    assert preset("variation").cfg_scale == 5.0
    assert preset("variation").params.reference_prompt is ReferencePrompt.PROMPT
    assert preset("prompt_guided").params.early_plain == 960.0
    assert preset("editing").params.early_plain == 900.0
    assert preset("editing").params.init_latent is InitLatent.INVERTED
    assert preset("controlnet").params.t_early == 400.0
    assert all(p.params.t_align == 600.0 for p in PRESETS.values())


# --- reference rows and conditioning -----------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "shared", "need_cond", "ref_roles", "sources"),
    [
        ([C, U], False, False, (C, U), [0, 1, 0, 1]),
        ([C, U], True, False, (C,), [0, 0, 0]),
        ([C, C, U, U], False, True, (C, U), [0, 1, 0, 0, 1, 1]),
        ([U, C], False, False, (C, U), [0, 1, 1, 0]),
        ([C], False, False, (C,), [0, 0]),
        ([U], False, False, (U,), [0, 0]),
        ([U], False, True, (C, U), [0, 1, 1]),
        ([U, U], True, True, (C,), [0, 0, 0]),
        ([], False, True, (C,), [0]),
        ([], False, False, (), []),
        (["cond", "uncond"], False, False, (C, U), [0, 1, 0, 1]),
    ],
)
def test_reference_rows_layouts(roles, shared, need_cond, ref_roles, sources) -> None:
    rows = reference_rows(roles, shared, need_cond)
    assert rows.roles == ref_roles
    assert rows.count == len(ref_roles)
    assert rows.sources.tolist() == sources
    assert rows.sources.dtype == torch.long
    if C in ref_roles:
        assert rows.index(C) == ref_roles.index(C)
    if not ref_roles:
        assert rows.index(C) is None and rows.index(U) is None
    if ref_roles == (U,):
        assert rows.index(C) is None


def test_reference_rows_reject_unknown_roles() -> None:
    with pytest.raises(ValueError):
        reference_rows(["conditional"], False)


def test_conditioning_validation() -> None:
    with pytest.raises(ValueError, match="context"):
        Conditioning(torch.zeros(77, CONTEXT_DIM))
    with pytest.raises(ValueError, match="y"):
        Conditioning(torch.zeros(2, 77, CONTEXT_DIM), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="nothing"):
        Conditioning.cat([])
    with pytest.raises(ValueError, match="y"):
        Conditioning.cat([text(1), Conditioning(text(2).context, torch.zeros(1, 8))])
    tiled = Conditioning.cat([text(1), text(2, tokens=154), text(3, rows=2, tokens=77)])
    assert tiled.context.shape == (4, 154, CONTEXT_DIM)
    assert torch.equal(tiled.context[0, :77], tiled.context[0, 77:])


def test_conditioning_tiling_is_exact_for_cross_attention() -> None:
    """77 + 154 tokens: tiled to 154; each row's cross-attention equals the untiled one."""
    ldm.modules.attention._ATTN_PRECISION = "model"
    torch.manual_seed(0)
    attn = ldm.modules.attention.CrossAttention(16, CONTEXT_DIM, heads=2, dim_head=8).double().requires_grad_(False)
    a, b = text(1, tokens=77), text(2, tokens=154)
    joined = Conditioning.cat([a, b])
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    out = attn(x, context=joined.context)
    torch.testing.assert_close(out[:1], attn(x[:1], context=a.context), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1:], attn(x[1:], context=b.context), rtol=0, atol=1e-12)
    # And through a whole UNet.
    unet = make_unet(torch.float64, seed=3)
    model = UNetEps(unet, DiscreteSchedule.stable_diffusion())
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    t = torch.full((2,), 500.0, dtype=torch.float64)
    both = model(z, t, joined)
    torch.testing.assert_close(both[:1], model(z[:1], t[:1], a), rtol=0, atol=1e-12)
    torch.testing.assert_close(both[1:], model(z[1:], t[1:], b), rtol=0, atol=1e-12)


def test_rival_unet_rejects_mismatched_rows(unet64, model64, schedule) -> None:
    chain = invert(z0(), GaussianDenoiser(), [5.0, 1.0, 0.0])
    with SelfAttentionInjector(unet64) as inj:
        rival = RivalUNet(model64, inj, RivalParams(), Reference(chain, text(1), text(1)))
        with pytest.raises(ValueError, match="rows"):
            rival(z0().repeat(2, 1, 1, 1), 1.0, 300.0, text(1), [C, U])
        with pytest.raises(ValueError, match="rows"):
            rival(z0().repeat(2, 1, 1, 1), 1.0, 300.0, text(1, rows=2), [C])


def test_injector_refuses_a_unet_without_self_attention() -> None:
    with pytest.raises(ValueError, match="self-attention"):
        SelfAttentionInjector(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# --- reference image ---------------------------------------------------------------------------


def palette_image() -> Image.Image:
    img = Image.new("P", (30, 20))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (15, 0, 30, 20))
    return img


def transparent_palette_image() -> Image.Image:
    img = palette_image()
    img.info["transparency"] = 0
    return img


IMAGES = {
    "RGB": lambda: Image.new("RGB", (30, 20), (255, 0, 0)),
    "RGBA_transparent": lambda: Image.new("RGBA", (30, 20), (255, 0, 0, 0)),
    "RGBA_opaque": lambda: Image.new("RGBA", (30, 20), (0, 0, 0, 255)),
    "LA": lambda: Image.new("LA", (30, 20), (0, 255)),
    "P": palette_image,
    "P_transparency": transparent_palette_image,
    "CMYK": lambda: Image.new("CMYK", (30, 20), (0, 255, 255, 0)),
    "I;16": lambda: Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16)),
    "I": lambda: Image.fromarray(np.full((20, 30), 65535, dtype=np.int32)),
    "F": lambda: Image.fromarray(np.full((20, 30), 1.0, dtype=np.float32)),
    "L": lambda: Image.new("L", (30, 20), 0),
    "1": lambda: Image.new("1", (30, 20), 1),
    "1x1": lambda: Image.new("RGB", (1, 1), (0, 0, 0)),
    "4000x1": lambda: Image.new("RGB", (4000, 1), (255, 255, 255)),
    "1x3000": lambda: Image.new("RGB", (1, 3000), (255, 255, 255)),
    "ndarray": lambda: np.zeros((9, 7, 3), dtype=np.uint8),
    "ndarray_gray": lambda: np.full((9, 7), 255, dtype=np.uint8),
    "ndarray_rgba": lambda: np.zeros((9, 7, 4), dtype=np.uint8),
}
EXPECTED_COLOUR = {  # (R, G, B) in [-1, 1] where the whole image has one colour
    "RGB": (1, -1, -1),
    "RGBA_transparent": (1, 1, 1),  # alpha flattened on white
    "RGBA_opaque": (-1, -1, -1),
    "LA": (-1, -1, -1),
    "CMYK": (1, -1, -1),
    "I;16": (1, 1, 1),
    "I": (1, 1, 1),
    "F": (1, 1, 1),
    "L": (-1, -1, -1),
    "1": (1, 1, 1),
    "1x1": (-1, -1, -1),
    "4000x1": (1, 1, 1),
    "1x3000": (1, 1, 1),
    "ndarray_gray": (1, 1, 1),
}


@pytest.mark.parametrize("kind", list(IMAGES))
@pytest.mark.parametrize(("width", "height"), [(64, 64), (64, 40), (8, 96)])
def test_prepare_reference_any_mode_and_size(kind, width, height) -> None:
    out = prepare_reference(IMAGES[kind](), width, height)
    assert out.shape == (1, 3, height, width) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    if kind in EXPECTED_COLOUR:
        expected = torch.tensor(EXPECTED_COLOUR[kind], dtype=torch.float32).reshape(1, 3, 1, 1)
        torch.testing.assert_close(out, expected.expand_as(out), rtol=0, atol=1e-6)


def test_prepare_reference_palette_keeps_colours_and_crops_the_centre() -> None:
    out = prepare_reference(palette_image(), 64, 64)  # 30x20 -> centre 20x20: left half red, right blue
    torch.testing.assert_close(out[0, :, 32, 2], torch.tensor([1.0, -1.0, -1.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0, :, 32, 61], torch.tensor([-1.0, -1.0, 1.0]), rtol=0, atol=1e-6)
    clear = prepare_reference(transparent_palette_image(), 64, 64)  # index 0 transparent -> white
    torch.testing.assert_close(clear[0, :, 32, 2], torch.tensor([1.0, 1.0, 1.0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("image", "size", "message"),
    [
        (None, (64, 64), "no reference image"),
        ("a.png", (64, 64), "must be an image"),
        (np.zeros((4, 4, 2), dtype=np.uint8), (64, 64), "shape"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), (64, 64), "shape"),
        (Image.new("RGB", (10, 10)), (4, 64), "at least 8x8"),
        (Image.new("RGB", (10, 10)), (64, 0), "at least 8x8"),
    ],
)
def test_prepare_reference_rejects(image, size, message) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_reference(image, *size)


def test_to_rgb_rejects_empty_images() -> None:
    with pytest.raises(ValueError, match="empty"):
        to_rgb(Image.new("RGB", (0, 5)))


# --- inpainting mask ---------------------------------------------------------------------------


def test_latent_mask_white_is_regenerate_and_invert_flips() -> None:
    img = Image.new("L", (64, 32), 0)
    img.paste(255, (0, 0, 32, 32))  # left half white
    regenerate = latent_mask(img, (4, 8))
    assert regenerate.shape == (4, 8) and regenerate.dtype == torch.bool
    assert regenerate[:, :4].all() and not regenerate[:, 4:].any()
    assert torch.equal(latent_mask(img, (4, 8), invert=True), ~regenerate)
    # Any mode is read as grayscale; threshold at 128.
    assert latent_mask(Image.new("RGB", (16, 16), (255, 255, 255)), (2, 2)).all()
    assert latent_mask(Image.new("L", (16, 16), 128), (2, 2)).all()
    assert not latent_mask(Image.new("L", (16, 16), 127), (2, 2)).any()
    assert latent_mask(Image.new("RGBA", (16, 16), (255, 255, 255, 0)), (2, 2)).all()
    with pytest.raises(ValueError, match="image"):
        latent_mask(np.ones((16, 16)), (2, 2))


# --- property tests ----------------------------------------------------------------------------

ENUM_VALUES = {
    "reference_prompt": [e.value for e in ReferencePrompt],
    "init_latent": [e.value for e in InitLatent],
    "switch_rule": [e.value for e in SwitchRule],
}
number_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1.0, max_value=1001.0),
    st.integers(min_value=-5, max_value=1005),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
)


def _number_ok(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1000


@settings(max_examples=60, deadline=None)
@given(
    numbers=st.fixed_dictionaries({name: number_values for name in NUMBER_FIELDS}),
    choices=st.fixed_dictionaries(
        {name: st.one_of(st.sampled_from(values), st.text(max_size=6)) for name, values in ENUM_VALUES.items()}
    ),
    adain_flag=st.one_of(st.booleans(), st.integers(0, 1), st.none()),
)
def test_property_params(numbers, choices, adain_flag) -> None:
    kwargs = {**numbers, **choices, "adain": adain_flag}
    bad = [n for n in NUMBER_FIELDS if not _number_ok(numbers[n])]
    bad += [n for n, v in choices.items() if v not in ENUM_VALUES[n]]
    bad += [] if isinstance(adain_flag, bool) else ["adain"]
    try:
        params = RivalParams(**kwargs)
    except ValueError as error:
        assert bad, f"valid parameters refused: {error}"
        assert any(name in str(error) for name in bad), str(error)
        return
    assert not bad, f"invalid parameters accepted: {bad}"
    for t in (0.0, 0.5, 1.0, 600.0, 601.0, 999.0, 1000.0):
        assert isinstance(params.attention_mode(t), AttentionMode)
        assert isinstance(params.adain_active(t), bool)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(["RGB", "RGBA", "LA", "L", "P", "CMYK", "1", "I;16", "I", "F"]),
    src=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    out=st.tuples(st.integers(8, 96), st.integers(8, 96)),
    seed=st.integers(0, 2**16),
)
def test_property_reference_image(mode, src, out, seed) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (src[1], src[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode) if mode not in ("I;16", "I", "F") else None
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (src[1], src[0]), dtype=np.uint16))
    elif mode in ("I", "F"):
        image = Image.fromarray(rng.random((src[1], src[0])).astype(np.float32) * 300).convert(mode)
    tensor = prepare_reference(image, *out)
    assert tensor.shape == (1, 3, out[1], out[0])
    assert torch.isfinite(tensor).all() and tensor.min() >= -1 and tensor.max() <= 1


schedule_values = st.lists(
    st.floats(min_value=1e-4, max_value=1e3, allow_nan=False), min_size=1, max_size=12, unique=True
)


@settings(max_examples=60, deadline=None)
@given(
    values=schedule_values,
    end=st.sampled_from([0.0, 0.029167, None]),
    probes=st.lists(st.floats(min_value=0.0, max_value=2e3, allow_nan=False), max_size=6),
    single=st.booleans(),
    shuffle=st.booleans(),
)
def test_property_invert_and_reference_at(values, end, probes, single, shuffle) -> None:
    """Strictly decreasing schedules invert to finite chains; anything else is a ValueError."""
    sigmas = sorted(values, reverse=not shuffle)  # ascending lists are invalid on purpose
    if end is not None:
        sigmas = [*sigmas, end]
    latent = z0(torch.float32 if single else torch.float64)
    try:
        chain = invert(latent, GaussianDenoiser(), sigmas)
    except ValueError:
        s = torch.tensor(sigmas, dtype=torch.float64)
        assert len(s) < 2 or bool((s[1:] >= s[:-1]).any())
        return
    assert chain.steps == len(sigmas) - 1
    assert torch.isfinite(chain.nodes).all() and torch.isfinite(chain.x0).all() and torch.isfinite(chain.eps).all()
    if sigmas[-1] == 0.0:
        assert torch.equal(chain.origin_latent, latent[0])
    for k, sigma in enumerate(sigmas):
        assert torch.equal(chain.reference_at(sigma), chain.nodes[k])
    for sigma in [*probes, sigmas[0] * 1.5, (sigmas[0] + sigmas[-1]) / 2]:
        ref = chain.reference_at(sigma)
        assert ref.shape == latent.shape[1:] and torch.isfinite(ref).all()
        assert torch.isfinite(chain.reference_vp(sigma)).all()


def test_reference_at_a_node_picks_the_nearest_of_two_close_nodes() -> None:
    """Two nodes within the float32 tolerance of each other (found by the property test above)."""
    chain = invert(z0(torch.float64), GaussianDenoiser(), [1.0, 0.99999])
    assert torch.equal(chain.reference_at(0.99999), chain.nodes[1])
    assert torch.equal(chain.reference_at(1.0), chain.nodes[0])

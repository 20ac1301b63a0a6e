"""How much, where and from which references (issue 16), end to end through the API on every stub WebUI.

Each equality the knobs promise: their defaults (and an all-white mask, a weight-0 reference) are today's RIVAL
bit for bit; attention strength 0 is RIVAL with the attention injection off; AdaIN strength 0 is ``adain: false``;
two identical references at 0.5 are one at 1; an all-black mask with seed noise is RIVAL off; a layer choice
naming every block is ``all``. Bad values stop with a 422 naming the field, leaving no hook.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import skimage.data
from harness import apart, close, enabled, generate, hook_count, reference_image, unet_of
from PIL import Image

from rival_ext.attention import find_self_attention
from rival_ext.params import AttentionMode, RivalParams
from rival_ext.webui.args import RivalInputError

pytestmark = pytest.mark.host("a1111", "forge", "reforge")

ALL_BLOCKS = "input.1, input.3, middle.0, output.0, output.1, output.2, output.3"  # the stub UNet's attention blocks


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def flat(level: int) -> str:
    return b64(Image.new("L", (64, 64), level))


def other_photo() -> str:
    return b64(Image.fromarray(skimage.data.coffee()))


def cat() -> str:
    return b64(reference_image())


@contextmanager
def attention_runs(model, monkeypatch) -> Iterator[dict[str, int]]:
    """Counts the UNet's forwards and its self-attention layers' forwards (RIVAL's blend runs extra ones)."""
    unet = unet_of(model)
    counts = {"unet": 0, "attention": 0}
    self_attention = {id(layer.module) for layer in find_self_attention(unet)}
    attention = type(find_self_attention(unet)[0].module)  # attn2 (cross-attention) has the same class
    forward = attention.forward

    @functools.wraps(forward)  # its signature stays readable (RIVAL finds the context argument by name)
    def counted(self, *args, **kwargs):
        counts["attention"] += id(self) in self_attention
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(attention, "forward", counted)
    handle = unet.register_forward_pre_hook(lambda *_: counts.__setitem__("unet", counts["unet"] + 1))
    try:
        yield counts
    finally:
        handle.remove()
        monkeypatch.undo()


@pytest.mark.parametrize("defaults", [
    {"attention_strength": 1.0, "adain_strength": 1.0, "reference_weight": 1.0, "layers": "all"},
    {"mask": flat(255), "reference_mask": flat(255)},
    {"more_references": [{"image": "PLACEHOLDER", "weight": 0.0}]},
], ids=["strengths 1", "white masks", "weight-0 reference"])
def test_the_knobs_at_their_defaults_are_todays_rival_bit_for_bit(webui, defaults, monkeypatch):
    """Bit for bit, and by the same route: the paper's context rewrite, one attention per layer and UNet call (a
    blended plan would agree only to round-off and run more attentions)."""
    model, module = webui
    if "more_references" in defaults:
        defaults = {"more_references": [{"image": other_photo(), "weight": 0.0}]}
    layers = len(find_self_attention(unet_of(model)))
    _, today = generate(module, enabled())
    with attention_runs(model, monkeypatch) as runs:
        _, knobs = generate(module, enabled(**defaults))
    assert (knobs == today).all()
    assert runs["attention"] == layers * runs["unet"] > 0
    with attention_runs(model, monkeypatch) as blended:
        generate(module, enabled(attention_strength=0.5))
    assert blended["attention"] > layers * blended["unet"]
    _, off = generate(module, None)
    assert apart(today, off)


def test_attention_strength_0_is_rival_without_the_attention_injection(webui, monkeypatch):
    _, module = webui
    _, zero = generate(module, enabled(attention_strength=0.0))
    _, full = generate(module, enabled())
    _, half = generate(module, enabled(attention_strength=0.5))
    monkeypatch.setattr(RivalParams, "attention_mode", lambda self, t: AttentionMode.PLAIN)
    _, injection_off = generate(module, enabled())
    assert (zero == injection_off).all()
    assert apart(zero, full) and apart(half, zero) and apart(half, full)


def test_adain_strength_0_is_adain_off(webui):
    _, module = webui
    _, zero = generate(module, enabled(adain_strength=0.0))
    _, off = generate(module, enabled(adain=False))
    _, full = generate(module, enabled())
    _, half = generate(module, enabled(adain_strength=0.5))
    assert (zero == off).all()
    assert apart(zero, full) and apart(half, zero) and apart(half, full)


def test_two_identical_references_at_half_weight_are_one_at_full_weight(webui):
    _, module = webui
    _, one = generate(module, enabled())
    _, two = generate(module, enabled(reference_weight=0.5, more_references=[{"image": cat(), "weight": 0.5}]))
    _, half = generate(module, enabled(reference_weight=0.5))
    assert close(two, one)
    assert apart(half, one)


def test_a_further_reference_changes_the_image_by_its_weight(webui):
    _, module = webui
    _, alone = generate(module, enabled())
    results = {w: generate(module, enabled(more_references=[{"image": other_photo(), "weight": w}]))[1]
               for w in (1.0, -1.0)}
    assert apart(results[1.0], alone) and apart(results[-1.0], alone) and apart(results[1.0], results[-1.0])


def test_a_negative_weight_is_not_a_positive_one(webui):
    _, module = webui
    _, toward = generate(module, enabled(reference_weight=0.5, adain=False))
    _, away = generate(module, enabled(reference_weight=-0.5, adain=False))
    _, off = generate(module, enabled(attention_strength=0.0, adain=False))
    assert apart(toward, away) and apart(away, off)


def test_an_all_black_mask_with_seed_noise_is_rival_off(webui):
    _, module = webui
    _, black = generate(module, enabled(mask=flat(0), init_latent="noise"))
    _, off = generate(module, None)
    _, left_half = generate(module, enabled(mask=b64(half_mask()), init_latent="noise"))
    _, everywhere = generate(module, enabled(init_latent="noise"))
    assert close(black, off)
    assert apart(left_half, off) and apart(left_half, everywhere)


def test_an_all_black_mask_turns_attention_and_adain_off_and_keeps_the_start(webui):
    """From the inverted latent RIVAL's attention moves this UNet's latent the most (1e-3): the mask must hold it."""
    _, module = webui
    _, black = generate(module, enabled(mask=flat(0), init_latent="inverted"))
    _, neither = generate(module, enabled(attention_strength=0.0, adain=False, init_latent="inverted"))
    _, attention_only = generate(module, enabled(adain=False, init_latent="inverted"))
    assert close(black, neither)
    assert apart(attention_only, neither)


def half_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    return mask


def test_a_reference_mask_takes_part_of_the_reference(webui):
    _, module = webui
    for knobs in ({"adain": False}, {"attention_strength": 0.0}):  # its keys and values; its statistics
        _, whole = generate(module, enabled(init_latent="inverted", **knobs))
        _, part = generate(module, enabled(init_latent="inverted", reference_mask=b64(half_mask()), **knobs))
        assert apart(part, whole), knobs


def test_adain_follows_the_weighted_statistics_of_the_positive_references(webui):
    _, module = webui
    adain_only = {"attention_strength": 0.0}
    _, one = generate(module, enabled(**adain_only))
    _, two = generate(module, enabled(reference_weight=0.3, more_references=[{"image": cat(), "weight": 0.3}],
                                      **adain_only))
    _, away = generate(module, enabled(more_references=[{"image": other_photo(), "weight": -1.0}], **adain_only))
    _, toward = generate(module, enabled(more_references=[{"image": other_photo(), "weight": 1.0}], **adain_only))
    assert close(two, one) and close(away, one)  # statistics of the cat alone
    assert apart(toward, one)


def test_every_block_named_is_all_and_fewer_blocks_differ(webui):
    _, module = webui
    _, everything = generate(module, enabled())
    _, named = generate(module, enabled(layers=ALL_BLOCKS))
    _, one = generate(module, enabled(layers="output.1", adain=False))
    _, none = generate(module, enabled(attention_strength=0.0, adain=False))
    _, all_no_adain = generate(module, enabled(adain=False))
    assert (named == everything).all()
    assert apart(one, none) and apart(one, all_no_adain)


@pytest.mark.parametrize(("values", "field"), [
    ({"attention_strength": 1.5}, "attention_strength"),
    ({"attention_strength": "strong"}, "attention_strength"),
    ({"adain_strength": -0.1}, "adain_strength"),
    ({"reference_weight": float("nan")}, "reference_weight"),
    ({"layers": "style"}, "layers"),  # the stub UNet has no output.6 .. output.11 (SD's style blocks)
    ({"layers": "output.99"}, "layers"),
    ({"layers": "up_blocks.0"}, "layers"),
    ({"layers": 3}, "layers"),
    ({"more_references": [{"image": "X"}] * 4}, "more_references"),
    ({"more_references": {"image": "X"}}, "more_references"),
    ({"more_references": [{"image": "not base64!"}]}, r"more_references\[0\].image"),
    ({"more_references": [{"weight": 0.5}]}, r"more_references\[0\]"),
    ({"more_references": [{"image": "CAT", "weight": 2}]}, r"more_references\[0\].weight"),
    ({"more_references": [{"image": "CAT", "strength": 1}]}, r"more_references\[0\] has unknown key"),
    ({"mask": base64.b64encode(b"text").decode()}, "mask is not an image"),
    ({"mask": 7}, "mask must be an image"),
    ({"reference_mask": "not base64!"}, "reference_mask"),
    ({"reference_2": "CAT", "more_references": [{"image": "CAT"}]}, "either as more_references"),
])
def test_bad_knob_values_stop_with_a_422_naming_the_field(webui, values, field):
    model, module = webui
    for item in values.get("more_references", []) if isinstance(values.get("more_references"), list) else []:
        if item.get("image") == "CAT":
            item["image"] = cat()
    if values.get("reference_2") == "CAT":
        values = {**values, "reference_2": cat()}
    with pytest.raises(RivalInputError, match=field) as caught:
        generate(module, enabled(**values))
    assert caught.value.status_code == 422
    assert hook_count(model) == 0


def test_a_lone_reference_at_weight_0_keeps_only_its_start_latent(webui):
    """Weight 0 leaves the reference's attention and statistics out; its chain still gives the start latent."""
    _, module = webui
    _, zero = generate(module, enabled(reference_weight=0.0))
    _, neither = generate(module, enabled(attention_strength=0.0, adain=False))
    _, off = generate(module, None)
    assert (zero == neither).all()
    assert apart(zero, off)

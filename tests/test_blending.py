"""Strength, weights, masks and layer choice at the self-attention layer and in AdaIN (issue 16), in float64.

A blended plan moves a generated row's plain attention output by ``weight * (attention with the reference -
plain)``; at weight 1 it must be the paper's context rewrite, below 0 the same step the other way. The mask of
where RIVAL acts scales that step per token, a reference mask keeps part of the reference's tokens, and a layer
outside the choice runs plain. AdaIN: the weighted statistics of the positive references, blended in by its
strength. The style/layout blocks are checked on SD1.5's real UNet layout (ldm, built on the meta device) and
on SDXL's (sgm's config).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_unet, text

from rival_ext.adain import adain, adain_to, normalizer, statistics
from rival_ext.attention import AttentionPlan, SelfAttentionInjector, Term, block_key, find_self_attention
from rival_ext.layers import layer_choice, selected_layers
from rival_ext.masks import at_tokens
from rival_ext.params import AttentionMode, RivalParams

EQUAL = 1e-12
CHANGED = 1e-4
GENERATED = torch.tensor([0])  # the generated row (row 1) reads the reference row (row 0)


@pytest.fixture(scope="module")
def unet():
    return make_unet(torch.float64, seed=33)


def layer_io(unet, plan: AttentionPlan | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each self-attention layer's (input, output) for the rows [reference, generated] under ``plan``."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    seen = []
    with SelfAttentionInjector(unet) as injector, injector.planned(plan):
        handles = [layer.module.register_forward_hook(lambda _m, args, out: seen.append((args[0], out)))
                   for layer in injector.layers]  # after RIVAL's blend hook: the layer's final output
        try:
            unet(x, torch.full((2,), 500.0, dtype=torch.float64), torch.cat([text(1).context, text(2).context]))
        finally:
            for handle in handles:
                handle.remove()
    return seen


def plain_of(unet) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return layer_io(unet, None)


def rewritten(unet, mode: AttentionMode, layers: frozenset[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The paper's context rewrite: both rows read the reference row."""
    return layer_io(unet, AttentionPlan(mode, torch.tensor([0, 0]), layers=layers))


def blended(unet, mode: AttentionMode, layers: frozenset[int], *terms: Term, where=None):
    return layer_io(unet, AttentionPlan(mode, torch.empty(0, dtype=torch.long), layers=layers, terms=terms,
                                        generated=1, where=where))


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("mode", [AttentionMode.REFERENCE, AttentionMode.CONCAT])
@pytest.mark.parametrize("weight", [1.0, 0.5, -0.5, -1.0])
def test_a_weighted_term_moves_the_plain_output_by_its_weight(unet, mode, weight):
    first = frozenset({0})  # the first layer: its input is the same in every run
    plain = plain_of(unet)[0][1]
    paper = rewritten(unet, mode, first)[0][1]
    out = blended(unet, mode, first, Term(GENERATED, weight))[0][1]
    assert gap(out[:1], plain[:1]) < EQUAL  # the reference row reads itself
    assert gap(out[1:], plain[1:] + weight * (paper[1:] - plain[1:])) < EQUAL
    assert gap(paper[1:], plain[1:]) > CHANGED


def test_two_terms_add_up(unet):
    first = frozenset({0})
    paper = rewritten(unet, AttentionMode.CONCAT, first)[0][1]
    out = blended(unet, AttentionMode.CONCAT, first, Term(GENERATED, 0.5), Term(GENERATED, 0.5))[0][1]
    assert gap(out, paper) < EQUAL


def test_the_mask_of_where_rival_acts_scales_each_token(unet):
    first = frozenset({0})
    where = torch.zeros(8, 8, dtype=torch.float64)
    where[:, :4] = 1.0  # the left half
    where[0, 0] = 0.25
    plain = plain_of(unet)[0][1]
    paper = rewritten(unet, AttentionMode.REFERENCE, first)[0][1]
    out = blended(unet, AttentionMode.REFERENCE, first, Term(GENERATED, 1.0), where=where)[0][1]
    scale = where.flatten()[None, :, None]  # the first layer's tokens are the latent grid
    assert gap(out[1:], plain[1:] + scale * (paper[1:] - plain[1:])) < EQUAL
    black = blended(unet, AttentionMode.REFERENCE, first, Term(GENERATED, 1.0), where=where * 0)[0][1]
    assert gap(black, plain) < EQUAL


def test_a_reference_mask_keeps_only_its_tokens(unet):
    first = frozenset({0})
    kept = torch.zeros(8, 8, dtype=torch.float64)
    kept[2:6, 1:7] = 1.0
    hidden = plain_of(unet)[0][0]
    out = blended(unet, AttentionMode.REFERENCE, first, Term(GENERATED, 1.0, kept))[0][1]
    attn1 = find_self_attention(unet)[0].module
    tokens = kept.flatten().nonzero().flatten()
    expected = attn1(hidden[1:], context=hidden[:1, tokens])
    assert gap(out[1:], expected) < EQUAL
    whole = rewritten(unet, AttentionMode.REFERENCE, first)[0][1]
    assert gap(out[1:], whole[1:]) > CHANGED


@pytest.mark.parametrize("how", ["rewrite", "blend"])
def test_a_layer_outside_the_choice_runs_plain(unet, how):
    chosen = frozenset({3})
    plain = plain_of(unet)
    if how == "rewrite":
        run = rewritten(unet, AttentionMode.CONCAT, chosen)
    else:
        run = blended(unet, AttentionMode.CONCAT, chosen, Term(GENERATED, -0.7))
    for layer in range(3):
        assert gap(run[layer][1], plain[layer][1]) < EQUAL, layer
    assert gap(run[3][1], plain[3][1]) > CHANGED


# --- AdaIN ---------------------------------------------------------------------------------------------


def eps(seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64) * scale + shift


def test_adain_strength_blends_the_normalized_prediction_in():
    x, ref = eps(1, 2.0, 0.3), eps(2, 0.5, -1.0)
    full = adain(x, ref)
    assert gap(normalizer([ref], [1.0], [None])(x), full) < EQUAL
    assert gap(normalizer([ref], [1.0], [None], strength=0.25)(x), x + 0.25 * (full - x)) < EQUAL
    assert gap(normalizer([ref], [1.0], [None], strength=0.0)(x), x) == 0.0


def test_adain_targets_the_weighted_statistics():
    x, a, b = eps(1), eps(2, 0.5, -1.0), eps(3, 3.0, 2.0)
    (mean_a, std_a), (mean_b, std_b) = statistics(a), statistics(b)
    out = normalizer([a, b], [0.6, 0.2], [None, None])(x)
    assert gap(out, adain_to(x, 0.75 * mean_a + 0.25 * mean_b, 0.75 * std_a + 0.25 * std_b)) < EQUAL
    assert gap(out.flatten(2).mean(-1, keepdim=True), 0.75 * mean_a + 0.25 * mean_b) < 1e-10
    assert gap(normalizer([a, a], [0.5, 0.5], [None, None])(x), adain(x, a)) < EQUAL


def test_a_reference_mask_takes_the_statistics_of_its_part():
    x, ref = eps(1), eps(2, 0.5, -1.0)
    part = torch.zeros(8, 8, dtype=torch.float64)
    part[:, :3] = 1.0
    assert gap(normalizer([ref], [1.0], [part])(x), adain_to(x, *statistics(ref[..., :3]))) < EQUAL
    assert gap(normalizer([ref], [1.0], [part])(x), adain(x, ref)) > CHANGED


def test_the_mask_of_where_rival_acts_blends_adain_per_position():
    x, ref = eps(1), eps(2, 0.5, -1.0)
    where = torch.zeros(8, 8, dtype=torch.float64)
    where[4:] = 1.0
    out = normalizer([ref], [1.0], [None], where=where)(x)
    assert gap(out[..., :4, :], x[..., :4, :]) == 0.0
    assert gap(out[..., 4:, :], adain(x, ref)[..., 4:, :]) < EQUAL


# --- Which layers: block names, style and layout ------------------------------------------------------


def sd15_keys() -> list[tuple[str, int, int]]:
    """SD1.5's self-attention layers, from its UNet as ldm builds it (v1-inference.yaml), on the meta device."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320,
                         attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8,
                         use_spatial_transformer=True, transformer_depth=1, context_dim=768, legacy=False)
    return [block_key(layer.name) for layer in find_self_attention(unet)]


def sdxl_keys() -> list[tuple[str, int, int]]:
    """SDXL base's (sgm sd_xl_base.yaml: transformer_depth [0, 2, 10], channel_mult [1, 2, 4], 2 res blocks,
    attention at the two lower resolutions; the middle block 10 deep)."""
    depth = {4: 2, 5: 2, 7: 10, 8: 10}
    keys = [("input", b, i) for b, n in depth.items() for i in range(n)]
    keys += [("middle", 0, i) for i in range(10)]
    keys += [("output", b, i) for b in range(6) for i in range(10 if b < 3 else 2)]
    return keys


def names(keys, selected) -> set[str]:
    return {f"{keys[i][0]}.{keys[i][1]}" for i in selected}


def test_sd15_has_the_blocks_the_readme_names():
    keys = sd15_keys()
    assert len(keys) == 16
    assert names(keys, range(16)) == {f"input.{b}" for b in (1, 2, 4, 5, 7, 8)} | {"middle.0"} | {
        f"output.{b}" for b in range(3, 12)}


@pytest.mark.parametrize(("family", "choice", "blocks"), [
    ("sd", "style", {f"output.{b}" for b in range(6, 12)}),  # Visual Style Prompting: the late decoder
    ("sd", "layout", {"input.8"}),
    ("sdxl", "style", {"output.1"}),  # InstantStyle: up_blocks.0.attentions.1
    ("sdxl", "layout", {"input.8"}),  # InstantStyle: down_blocks.2.attentions.1
    ("sdxl", "output.1.3, middle", {"output.1", "middle.0"}),
])
def test_style_and_layout_name_the_published_blocks(family, choice, blocks):
    keys = sd15_keys() if family == "sd" else sdxl_keys()
    selected = selected_layers(layer_choice(choice), keys, is_sdxl=family == "sdxl")
    assert names(keys, selected) == blocks
    if family == "sdxl" and choice == "style":
        assert len(selected) == 10  # every transformer block of output.1


def test_all_selects_every_layer_and_unknown_blocks_are_named():
    keys = sdxl_keys()
    assert selected_layers("all", keys, is_sdxl=True) is None
    with pytest.raises(ValueError, match=r"no self-attention block 'input\.1'"):
        selected_layers("input.1", keys, is_sdxl=True)
    for bad in ("upper", "output.x", "input.8,", ""):
        if bad == "input.8,":
            assert layer_choice(bad) == "input.8"
            continue
        with pytest.raises(ValueError, match="layers"):
            RivalParams(layers=bad)


def test_strength_zero_attends_plainly_at_every_t():
    params = RivalParams(attention_strength=0.0)
    assert {params.attention_mode(t) for t in (999.0, 700.0, 300.0, 1.0)} == {AttentionMode.PLAIN}
    assert RivalParams().attention_mode(300.0) is AttentionMode.CONCAT


@pytest.mark.parametrize(("size", "tokens"), [((8, 8), 64), ((8, 8), 16), ((8, 8), 4), ((65, 63), 33 * 32),
                                               ((65, 63), 17 * 16), ((65, 63), 9 * 8)])
def test_a_mask_reaches_every_layer_grid_of_any_size(size, tokens):
    """A generation of 520x504 px has a 65x63 latent; the UNet's stride-2 layers round up: 33x32, 17x16, 9x8."""
    g = torch.Generator().manual_seed(7)
    mask = torch.rand(size, generator=g, dtype=torch.float64)
    h, w = size
    factor = 1
    while -(-h // factor) * -(-w // factor) != tokens:
        factor *= 2
    expected = [[float(mask[i:i + factor, j:j + factor].mean()) for j in range(0, w, factor)]
                for i in range(0, h, factor)]
    assert gap(at_tokens(mask, tokens), torch.tensor(expected, dtype=torch.float64).flatten()) < EQUAL
    with pytest.raises(ValueError, match="does not tile"):
        at_tokens(mask, tokens + 1)

"""RIVAL in the Forge forks (stub: tests/forge_stub), as other extensions and Forge's own machinery meet it.

Forge's UNet patcher is cloned for every pass; RIVAL puts a model function wrapper and an attn1 patch on its
clone. Here: another extension's attn1 *replace* patch (the reference preprocessors', StyleAlign's) must not
bypass RIVAL (with module hooks on attn1 it did, silently); its own passes on other latents stay its own;
ControlNet's residuals reach the generated rows only; Forge's double ``process_before_every_sampling`` of the
hires pass inverts once; a wrapper set before RIVAL's is kept, one set after is wrapped again; RIVAL's own
passes trigger no post-CFG function; a split of the rows into several calls changes nothing; a wrapper that
shuts RIVAL out stops the generation with a message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import (  # first: puts the stub on sys.path
    apart,
    close,
    enabled,
    generate,
    hook_count,
    pixels,
    txt2img,
    unet_of,
)
from modules import errors, scripts, shared

from rival_ext import inversion

pytestmark = pytest.mark.host("forge", "reforge")


class Patching(scripts.Script):
    """Another extension: in ``process_before_every_sampling`` it clones the UNet patcher and patches it."""

    def __init__(self, patch) -> None:
        self.patch = patch

    def title(self):
        return f"patching {id(self)}"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process_before_every_sampling(self, p, *args, **kwargs):
        unet = p.sd_model.forge_objects.unet.clone()
        self.patch(unet)
        p.sd_model.forge_objects.unet = unet


def plain_attention(q, k, v, extra_options):
    """An attn1 replace patch that computes the attention from the q, k, v it is given (as Forge's reference
    preprocessor does outside its sigma range)."""
    from backend.nn.unet import attention_projected

    attn = type("Heads", (), {"heads": extra_options["n_heads"], "scale": extra_options["dim_head"] ** -0.5})
    return attention_projected(attn, q, k, v)


def test_another_extensions_attn1_replace_patch_does_not_bypass_rival(webui):
    """With a replace patch on every attn1, Forge's block no longer calls attn1: RIVAL's attn1 patch runs before the
    projections, so the replace gets RIVAL's keys and values and the image is the one without the replace
    (t_align still matters)."""
    model, module = webui
    replace = Patching(lambda unet: unet.set_model_replace_all(plain_attention, "attn1"))
    _, alone = generate(module, enabled(t_align=600, adain=False))
    _, with_replace = generate(module, enabled(t_align=600, adain=False), before=[replace])
    _, other_t_align = generate(module, enabled(t_align=1000, adain=False), before=[replace])
    _, bypassed = generate(module, enabled(t_align=600, adain=False, early_plain=0), before=[replace])  # attention off
    assert close(with_replace, alone)
    assert apart(other_t_align, with_replace) and apart(with_replace, bypassed)
    assert hook_count(model) == 0 and not errors.exception_records


def test_another_extensions_pass_on_its_own_latents_is_left_alone(webui):
    """Forge's reference preprocessors run the model themselves from a conditioning modifier, on latents of their
    own, recording their attention: RIVAL must not add its rows there, only to the sampler's own calls."""
    model, module = webui
    recorded = []

    def recording(q, k, v, extra_options):
        if extra_options.get("recording"):
            recorded.append((q.shape[0], k.shape[1], q.shape[1]))
        return plain_attention(q, k, v, extra_options)

    from backend.sampling.sampling_function import sampling_function_inner

    def modifier(model_, x, timestep, uncond, cond, cond_scale, model_options, seed):
        options = {**model_options, "transformer_options": {**model_options["transformer_options"], "recording": True}}
        sampling_function_inner(model_, torch.randn_like(x), timestep, uncond, cond, 1, options, seed)
        return model_, x, timestep, uncond, cond, cond_scale, model_options, seed

    def patch(unet):
        unet.set_model_replace_all(recording, "attn1")
        unet.add_conditioning_modifier(modifier)

    result, _ = generate(module, enabled(), after=[Patching(patch)], batch_size=2)
    assert recorded and all(rows == 2 and keys == queries for rows, keys, queries in recorded)  # cond only, own keys
    assert len(result.images) == 2 and hook_count(model) == 0 and not errors.exception_records


class ControlNet:
    """A ControlNet in the patcher's linked list: a residual for the middle block, one row per row of the call."""

    previous_controlnet = None

    def __init__(self) -> None:
        self.rows: list[int] = []

    def get_control(self, x, t, c, chunks):
        self.rows.append(x.shape[0])
        return {"middle": [torch.full((x.shape[0], 64, 4, 4), 0.3, dtype=x.dtype)]}


def test_controlnet_residuals_reach_the_generated_rows_only(webui, capsys):
    """The reference rows ride in the call with zero residuals (the official ControlNet pipeline gives the reference
    none): the image equals the one where the reference runs in a pass of its own, and the control acts."""
    model, module = webui
    controlnet = ControlNet()

    def attach_controlnet(unet):
        unet.controlnet_linked_list = controlnet

    with_control = Patching(attach_controlnet)
    _, plain_rival = generate(module, enabled())
    _, in_call = generate(module, enabled(), before=[with_control])
    reference_apart = Patching(lambda unet: (attach_controlnet(unet),
                                             unet.set_model_replace_all(plain_attention, "attn1")))
    _, separate = generate(module, enabled(), before=[reference_apart])
    assert "could not be applied" not in capsys.readouterr().out
    assert close(in_call, separate) and apart(in_call, plain_rival)
    assert set(controlnet.rows) == {2}  # residuals computed for the generated rows, padded for RIVAL's
    assert hook_count(model) == 0


def test_the_hires_pass_is_inverted_once_though_forge_prepares_it_twice(webui, monkeypatch):
    """Forge calls process_before_every_sampling twice for the hires pass (the first call's clone is thrown away):
    RIVAL inverts once per pass, also without the chain cache."""
    model, module = webui
    shared.opts.data["rival_chain_cache_entries"] = 0
    inversions = []
    invert = inversion.invert_on_host

    def counting(*args, **kwargs):
        inversions.append(1)
        return invert(*args, **kwargs)

    monkeypatch.setattr(inversion, "invert_on_host", counting)
    try:
        _, result = txt2img(module, enabled(apply_to_hires=True), enable_hr=True, hr_scale=2.0,
                            hr_second_pass_steps=2, denoising_strength=0.5, hr_upscaler="Latent")
    finally:
        shared.opts.data["rival_chain_cache_entries"] = 4
    assert len(inversions) == 2 and "off in the hires pass" not in result.info
    assert hook_count(model) == 0 and not errors.exception_records


def test_a_wrapper_before_rivals_is_kept_and_one_after_is_wrapped_again(webui):
    """Forge has one model function wrapper slot: RIVAL's calls one that was there; when another extension clones
    RIVAL's patcher and takes the slot, RIVAL's is put back around it at the next evaluation."""
    model, module = webui
    calls = []

    def wrapper(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    def take_slot(unet):
        unet.set_model_unet_function_wrapper(wrapper)

    _, alone = generate(module, enabled())
    _, before = generate(module, enabled(), before=[Patching(take_slot)])
    assert calls and close(before, alone)
    calls.clear()
    _, after = generate(module, enabled(), after=[Patching(take_slot)])
    assert calls and close(after, alone)
    assert hook_count(model) == 0


def test_rivals_own_passes_trigger_no_post_cfg_function(webui):
    """A separate reference pass runs the model directly, never through sampling_function_inner: the post-CFG
    functions of other extensions run once per evaluation."""
    _, module = webui
    seen = []

    def post_cfg(args):
        seen.append(1)
        return args["denoised"]

    def patch(unet):
        unet.set_model_sampler_post_cfg_function(post_cfg)
        unet.set_model_replace_all(plain_attention, "attn1")  # the reference rows then run apart

    generate(module, enabled(), before=[Patching(patch)], steps=5)
    assert len(seen) == 5


def test_a_split_of_the_rows_into_calls_changes_nothing(webui, monkeypatch):
    """Forge splits the cond and uncond entries into several calls when memory is short; each call carries the roles
    of its chunks, and the AdaIN target is the same row whatever the split (invariant 10)."""
    from backend.sampling import sampling_function

    _, module = webui
    _, together = txt2img(module, enabled(), batch_size=2, prompt="a cat AND a dog:0.5")
    monkeypatch.setattr(sampling_function, "max_chunks", 1)
    _, split = txt2img(module, enabled(), batch_size=2, prompt="a cat AND a dog:0.5")
    for i in range(2):
        assert np.abs(pixels(split, i) - pixels(together, i)).max() <= 1


def test_a_wrapper_that_shuts_rival_out_stops_the_generation_with_a_message(webui):
    """An extension that replaces the model function wrapper after RIVAL's evaluation opened (no call reaches
    RIVAL) must not end in a silently plain image."""
    model, module = webui
    from modules import script_callbacks

    def take_over(params):
        options = shared.sd_model.forge_objects.unet.model_options
        options["model_function_wrapper"] = lambda apply_model, args: apply_model(
            args["input"], args["timestep"], **args["c"])

    script_callbacks.on_cfg_denoiser(take_over)
    with pytest.raises(RuntimeError, match="bypassed"):
        txt2img(module, enabled())
    assert hook_count(model) == 0


def test_the_inversion_runs_on_forges_unet_loaded_by_its_memory_management(webui):
    from backend import memory_management

    model, module = webui
    memory_management.loads.clear()
    txt2img(module, enabled())
    patchers = [m for m in memory_management.loads if getattr(m, "model", None) is not None]
    assert patchers and all(p.model.diffusion_model is unet_of(model) for p in patchers)

"""Reliability of the A1111 extension: failures at every phase, bad input, cache keys, precision.

Failures are injected where a real session meets them (VAE, inversion, first step, mid-sampling,
hires pass, postprocess); after each, the UNet, its attention layers and A1111's callback lists
must be as before, and a plain generation bit-identical to one that never saw RIVAL.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from harness import (
    CHAINS,
    FORGE,
    callback_count,
    enabled,
    hook_count,
    img2img,
    install_model,
    pixels,
    txt2img,
    unet_of,
)
from modules import errors, processing, shared
from PIL import Image

from rival_ext.request import RivalRuntimeError
from rival_ext.webui import extension
from rival_ext.webui.args import RivalInputError

pytestmark = pytest.mark.host("a1111", "forge", "reforge")  # host-neutral unless a test says otherwise


def fail_on_call(model, n: int, error: BaseException):
    """A UNet pre-hook raising ``error`` at its n-th call (the inversion makes the first ones)."""
    calls = []

    def hook(*_args):
        calls.append(1)
        if len(calls) == n:
            raise error

    return unet_of(model).register_forward_pre_hook(hook)


def assert_clean(model, p, hooks: int, callbacks: int) -> None:
    assert hook_count(model) == hooks
    assert callback_count() == callbacks
    assert "sample" not in vars(p)


@pytest.mark.parametrize(
    ("phase", "call"),
    [("inversion", 1), ("last inversion step", 6), ("first sampling step", 7), ("mid-sampling", 10)],
)
def test_a_failure_at_any_unet_call_leaves_the_model_as_it_was(webui, phase, call):
    model, module = webui
    _, before = txt2img(module, None)
    hooks, callbacks = hook_count(model), callback_count()
    handle = fail_on_call(model, call, RuntimeError(f"injected at {phase}"))
    with pytest.raises((RuntimeError, RivalRuntimeError), match=f"injected at {phase}"):
        txt2img(module, enabled())
    handle.remove()
    assert hook_count(model) == hooks and callback_count() == callbacks
    _, after = txt2img(module, None)
    assert np.array_equal(pixels(before), pixels(after))


def test_a_vae_failure_stops_with_a_message_and_no_hook(webui, monkeypatch):
    model, module = webui

    def broken(*_args):
        raise RuntimeError("VAE exploded")

    monkeypatch.setattr(model, "encode_first_stage", broken)
    with pytest.raises(RivalRuntimeError, match="VAE exploded"):
        txt2img(module, enabled())
    assert hook_count(model) == 0


def test_a_failure_in_the_hires_pass_leaves_no_hook(webui):
    model, module = webui
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 3,
             "denoising_strength": 0.6}
    # 6 inversion + 6 first-pass calls, then the hires inversion: fail inside it
    handle = fail_on_call(model, 14, RuntimeError("hires boom"))
    with pytest.raises((RuntimeError, RivalRuntimeError), match="hires boom"):
        txt2img(module, enabled(apply_to_hires=True), **hires)
    handle.remove()
    assert hook_count(model) == 0


def test_a_failing_postprocess_is_swallowed_by_a1111_and_leaves_nothing(webui, monkeypatch):
    model, module = webui

    def broken_postprocess(p, processed):
        raise RuntimeError("postprocess failed")

    monkeypatch.setattr(extension, "postprocess", broken_postprocess)
    p, result = txt2img(module, enabled())
    assert len(result.images) == 1 and errors.exception_records
    assert hook_count(model) == 0
    extension.finish(p)  # what the next process() on this p (loopback, say) does first
    assert "sample" not in vars(p)


def test_out_of_memory_in_the_inversion_gives_a_clear_message(webui):
    """Out of memory in fp32 and again in the model's precision: the job stops with a clear message."""
    model, module = webui

    def no_memory(_module, args):
        if args[0].shape[0] == 1:  # the inversion's calls
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    handle = unet_of(model).register_forward_pre_hook(no_memory)
    with pytest.raises(RivalRuntimeError, match="out of GPU memory"):
        txt2img(module, enabled())
    handle.remove()
    assert hook_count(model) == 0


@pytest.mark.host("a1111")
def test_a_half_precision_nan_inversion_is_redone_in_fp32(webui, monkeypatch):
    """With the setting "model", an inversion that overflows through A1111's apply_model is redone
    on the UNet itself in fp32 (apply_model is where A1111 casts to half precision)."""
    model, module = webui
    monkeypatch.setattr(shared.opts, "rival_inversion_precision", "model", raising=False)
    apply_model = model.apply_model

    def overflowing(x, t, cond, *args, **kwargs):
        out = apply_model(x, t, cond, *args, **kwargs)
        return torch.full_like(out, float("inf")) if x.shape[0] == 1 else out  # only the inversion's calls

    monkeypatch.setattr(model, "apply_model", overflowing)
    _, result = txt2img(module, enabled(adain=False, early_plain=0))
    assert "redone in fp32" in result.info and np.isfinite(pixels(result)).all()
    assert next(unet_of(model).parameters()).dtype == torch.float32
    assert hook_count(model) == 0


@pytest.mark.host("a1111")
def test_fp32_and_model_precision_inversions_agree_on_an_fp32_model(webui, monkeypatch):
    _, module = webui
    _, fp32 = txt2img(module, enabled())
    CHAINS.clear()
    monkeypatch.setattr(shared.opts, "rival_inversion_precision", "model", raising=False)
    _, native = txt2img(module, enabled())
    assert np.abs(pixels(fp32) - pixels(native)).max() <= 1


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (40, 30), (10, 200, 30, 128)),
        Image.new("LA", (30, 40), (100, 50)),
        Image.new("P", (33, 21), 7),
        Image.new("CMYK", (50, 50), (10, 20, 30, 40)),
        Image.new("I;16", (64, 48), 40000),
        Image.new("L", (64, 64), 128),
        Image.new("RGB", (1, 1), (255, 0, 0)),
        Image.new("RGB", (4000, 3), (0, 0, 255)),
        Image.new("1", (17, 19), 1),
    ],
    ids=["RGBA", "LA", "P", "CMYK", "I16", "L", "1x1", "extreme-aspect", "bilevel"],
)
def test_every_image_mode_and_shape_is_accepted(webui, image):
    model, module = webui
    _, result = txt2img(module, {"enabled": True, "reference_image": image}, steps=3)
    assert len(result.images) == 1 and np.isfinite(pixels(result)).all()
    assert hook_count(model) == 0 and not errors.exception_records


def test_a_very_large_reference_is_handled(webui):
    _, module = webui
    _, result = txt2img(module, {"enabled": True, "reference_image": Image.new("RGB", (6000, 4000), 90)}, steps=3)
    assert len(result.images) == 1


def test_inpainting_with_an_empty_mask_is_refused_and_a_full_mask_runs(webui):
    model, module = webui
    with pytest.raises(RivalInputError, match="mask is empty"):
        img2img(module, {"enabled": True, "use_init_image": True}, mask=Image.new("L", (64, 64), 0))
    _, result = img2img(module, {"enabled": True, "use_init_image": True}, mask=Image.new("L", (64, 64), 255))
    assert len(result.images) == 1 and hook_count(model) == 0


def test_use_init_image_in_txt2img_is_refused(webui):
    _, module = webui
    with pytest.raises(RivalInputError, match="init image"):
        txt2img(module, {"enabled": True, "use_init_image": True})


def test_the_same_request_twice_gives_the_same_image(webui, monkeypatch):
    _, module = webui
    monkeypatch.setattr(shared.opts, "rival_chain_cache_entries", 0, raising=False)  # invert both times
    _, first = txt2img(module, enabled(), batch_size=2)
    _, second = txt2img(module, enabled(), batch_size=2)
    assert len(CHAINS) == 0 and "chain from cache" not in second.info
    for i in range(2):
        assert np.array_equal(pixels(first, i), pixels(second, i))


def test_batch_count_does_not_change_an_image(webui):
    _, module = webui
    _, counted = txt2img(module, enabled(), n_iter=2, seed=20)
    _, alone = txt2img(module, enabled(), seed=21)
    assert np.abs(pixels(counted, 1) - pixels(alone)).max() <= 1


def test_rival_never_draws_from_a1111s_noise_stream(webui, monkeypatch):
    from modules import rng

    draws = []
    original = rng.ImageRNG.next

    def counting(self):
        draws.append(1)
        return original(self)

    monkeypatch.setattr(rng.ImageRNG, "next", counting)
    _, module = webui
    txt2img(module, None, sampler_name="Euler a")
    plain = len(draws)
    draws.clear()
    txt2img(module, enabled(), sampler_name="Euler a")
    assert len(draws) == plain


@pytest.mark.parametrize(
    ("change", "kwargs"),
    [
        ("steps", {"steps": 7}),
        ("size", {"width": 80}),
        ("schedule", {"scheduler": "Karras"}),
        ("sampler family", {"sampler_name": "DDIM"}),
        ("reference prompt", {"prompt": "a dog"}),
        ("reference image", {}),
        ("checkpoint", {}),
        ("vae", {}),
        ("lora", {}),
    ],
)
def test_every_part_of_the_chain_key_invalidates_the_cache(webui, monkeypatch, change, kwargs):
    model, module = webui
    rival = enabled(preset="variation")  # reference prompt = the prompt
    txt2img(module, rival)
    assert len(CHAINS) == 1
    if change == "reference image":
        rival = {**rival, "reference_image": Image.new("RGB", (64, 64), 3)}
    elif change == "checkpoint":
        monkeypatch.setattr(model.sd_checkpoint_info, "shorthash", "feedbeef")
    elif change == "vae":
        monkeypatch.setattr(shared.opts, "sd_vae", "other.vae.pt", raising=False)
    elif change == "lora" and FORGE:  # Forge: the LoRA patches of the patcher the passes start from
        base = model.forge_objects_after_applying_lora.unet
        monkeypatch.setattr(base, "lora_patches", {("style.safetensors", 0.7, 1.0, False): {}})
    elif change == "lora":  # A1111: the built-in Lora extension's loaded networks
        network = types.SimpleNamespace(name="style", te_multiplier=1.0, unet_multiplier=0.7)
        monkeypatch.setitem(sys.modules, "networks", types.SimpleNamespace(loaded_networks=[network]))
    _, result = txt2img(module, rival, **kwargs)
    assert len(CHAINS) == 2, change
    assert "chain from cache" not in result.info


def test_the_cache_never_grows_past_its_setting(webui, monkeypatch):
    _, module = webui
    monkeypatch.setattr(shared.opts, "rival_chain_cache_entries", 2, raising=False)
    for steps in (3, 4, 5):
        txt2img(module, enabled(), steps=steps)
    assert len(CHAINS) == 2
    monkeypatch.setattr(shared.opts, "rival_chain_cache_mb", 0, raising=False)
    txt2img(module, enabled(), steps=6)
    assert len(CHAINS) == 0


def test_a_job_is_invisible_to_another_generation(webui):
    """Per-job state lives on its ``p``: a plain generation in between is untouched."""
    _, module = webui
    _, plain = txt2img(module, None)
    waiting = processing.StableDiffusionProcessingTxt2Img(prompt="x", steps=3, width=64, height=64)
    waiting.extra_generation_params = {}
    extension.start(waiting, [enabled()])
    assert extension.job_of(waiting) is not None
    _, other = txt2img(module, None)
    assert np.array_equal(pixels(plain), pixels(other))
    extension.finish(waiting)
    assert "sample" not in vars(waiting)


@pytest.mark.host("a1111")
@pytest.mark.parametrize("setup", ["sd3", "tensorrt", "block rewrite", "unclip", "hypertile"])
def test_unsupported_setups_run_without_rival_and_say_why(webui, monkeypatch, setup):
    model, module = webui
    if setup == "sd3":
        monkeypatch.setattr(model, "is_sd3", True, raising=False)
    elif setup == "tensorrt":
        from modules import sd_unet

        monkeypatch.setattr(sd_unet, "current_unet", object())
    elif setup == "block rewrite":  # another extension's block forward (ControlNet's: test_a1111_controlnet.py)
        block = next(m for m in unet_of(model).modules() if hasattr(m, "attn1"))
        monkeypatch.setattr(block, "_forward", block._forward, raising=False)
    elif setup == "hypertile":  # Hypertile wraps attn1's forward per instance and tiles its input
        attn1 = next(m.attn1 for m in unet_of(model).modules() if hasattr(m, "attn1"))
        monkeypatch.setattr(attn1, "forward", attn1.forward, raising=False)
    else:
        monkeypatch.setattr(model.model, "conditioning_key", "crossattn-adm", raising=False)
    _, plain = txt2img(module, None)
    _, result = txt2img(module, enabled())
    assert np.array_equal(pixels(plain), pixels(result))
    assert "RIVAL notes" in result.info and "off:" in result.info
    assert hook_count(model) == 0


def test_rival_stops_at_a_model_switch_mid_sampling(webui, monkeypatch):
    model, module = webui
    from modules import script_callbacks

    other = install_model(seed=1)
    shared.sd_model = model
    calls = []

    def switch(params):
        calls.append(1)
        if len(calls) == 3:
            shared.sd_model = other  # what A1111's refiner switch does

    script_callbacks.on_cfg_denoiser(switch)
    _, result = txt2img(module, enabled())
    assert "stopped at the refiner switch" in result.info
    assert hook_count(model) == 0 and hook_count(other) == 0


@pytest.mark.parametrize("case", ["inpaint", "hires"])
def test_disabled_is_bit_identical_for_inpaint_and_hires(webui, case):
    _, module = webui
    if case == "inpaint":
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        _, absent = img2img(module, None, mask=mask)
        _, disabled = img2img(module, {"enabled": False}, mask=mask)
    else:
        hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 3,
                 "denoising_strength": 0.6}
        _, absent = txt2img(module, None, **hires)
        _, disabled = txt2img(module, {"enabled": False}, **hires)
    assert np.array_equal(pixels(absent), pixels(disabled))


def test_fewer_inversion_steps_make_a_coarser_chain(webui, monkeypatch):
    model, module = webui
    monkeypatch.setattr(shared.opts, "rival_inversion_steps", 2, raising=False)
    calls = []
    handle = unet_of(model).register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    _, result = txt2img(module, enabled(), steps=6)
    handle.remove()
    chain = next(iter(CHAINS._items.values()))
    assert chain.steps == 2 and calls.count(1) == 2  # two one-row inversion calls instead of six
    assert "inversion on 2 steps" in result.info and hook_count(model) == 0


def test_the_feature_cache_is_dropped_when_the_chain_changes(webui, monkeypatch):
    _, module = webui
    from rival_ext.job import FEATURES

    monkeypatch.setattr(shared.opts, "rival_feature_cache", True, raising=False)
    txt2img(module, enabled(preset="variation"))
    first = set(FEATURES)
    txt2img(module, enabled(preset="variation"), prompt="a dog")  # another reference text: another chain
    assert len(FEATURES) == 1 and set(FEATURES) != first


def test_and_prompts_route_every_sub_prompt_row_to_the_reference_cond_row(webui):
    model, module = webui
    _, together = txt2img(module, enabled(), prompt="a cat AND a hat:0.7", batch_size=2)
    shared.opts.batch_cond_uncond = False
    _, apart = txt2img(module, enabled(), prompt="a cat AND a hat:0.7", batch_size=2)
    for i in range(2):
        assert np.abs(pixels(together, i) - pixels(apart, i)).max() <= 1
    assert hook_count(model) == 0 and not errors.exception_records


@pytest.mark.host("a1111")
def test_v_prediction_checkpoints_run(webui, monkeypatch):
    model, module = webui
    monkeypatch.setattr(model, "parameterization", "v")
    _, plain = txt2img(module, None)
    _, result = txt2img(module, enabled())
    assert not np.array_equal(pixels(plain), pixels(result)) and np.isfinite(pixels(result)).all()
    assert hook_count(model) == 0 and not errors.exception_records


@pytest.mark.host("a1111")
def test_no_memory_for_an_fp32_unet_falls_back_to_the_models_precision(webui, monkeypatch):
    model, module = webui
    from contextlib import contextmanager

    from rival_ext.a1111 import model as a1111_model

    @contextmanager
    def no_memory(*_args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        yield

    monkeypatch.setattr(a1111_model, "full_precision", no_memory)
    _, result = txt2img(module, enabled())
    assert "no memory for an fp32 UNet" in result.info and len(result.images) == 1
    assert hook_count(model) == 0

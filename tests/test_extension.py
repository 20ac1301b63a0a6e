"""The A1111 extension end to end, over the v1.10.1 ``modules`` stub and a small real ldm UNet.

Each test drives ``processing.process_images`` with the real ``scripts/rival.py`` attached, the way
A1111 does, and checks exact properties: disabled is bit-identical, hooks are gone afterwards,
results do not depend on how A1111 batches rows, bad input stops with a named error.
"""

from __future__ import annotations

import base64
import io

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
    pixels,
    reference_image,
    txt2img,
    unet_of,
)
from modules import errors, processing, script_callbacks, scripts, shared
from PIL import Image

from rival_ext.webui import extension
from rival_ext.webui.args import FIELDS, RivalInputError

pytestmark = pytest.mark.host("a1111", "forge", "reforge")  # host-neutral unless a test says otherwise


def test_disabled_is_bit_identical_to_the_extension_absent(webui):
    _, module = webui
    _, absent = txt2img(module, None)
    _, disabled = txt2img(module, {"enabled": False, "reference_image": reference_image()})
    _, positional = txt2img(module, [False, None])
    assert np.array_equal(pixels(absent), pixels(disabled))
    assert np.array_equal(pixels(absent), pixels(positional))


def test_rival_changes_the_image_and_leaves_no_hook(webui):
    model, module = webui
    hooks, callbacks = hook_count(model), callback_count()
    _, plain = txt2img(module, None)
    p, result = txt2img(module, enabled())
    assert not np.array_equal(pixels(plain), pixels(result))
    assert hook_count(model) == hooks and callback_count() == callbacks
    assert "sample" not in vars(p) and extension.job_of(p) is None
    assert "RIVAL: variation" in result.info and "RIVAL t_align: 600" in result.info
    _, after = txt2img(module, None)
    assert np.array_equal(pixels(plain), pixels(after))
    assert not errors.exception_records


def test_a_failure_mid_sampling_removes_every_hook(webui):
    model, module = webui
    _, before = txt2img(module, None)
    unet, calls = unet_of(model), []

    def fail_on_third_call(*_args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    handle = unet.register_forward_pre_hook(fail_on_third_call)
    hooks = hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        txt2img(module, enabled())
    handle.remove()
    assert hook_count(model) == hooks - 1 == 0
    _, after = txt2img(module, None)
    assert np.array_equal(pixels(before), pixels(after))


@pytest.mark.parametrize("action", ["interrupt", "skip"])
def test_interrupt_or_skip_mid_sampling_ends_cleanly(webui, action):
    model, module = webui
    seen = []

    def stop_at_step_two(params):
        seen.append(1)
        if len(seen) == 2:
            getattr(shared.state, action)()

    script_callbacks.on_cfg_denoiser(stop_at_step_two)
    p, result = txt2img(module, enabled())
    assert len(seen) == 2 and len(result.images) == 1
    assert hook_count(model) == 0 and extension.job_of(p) is None


def test_interrupt_during_the_inversion_leaves_no_hook(webui):
    model, module = webui
    calls = []

    def interrupt(*_args):
        calls.append(1)
        if len(calls) == 2:
            shared.state.interrupt()

    handle = unet_of(model).register_forward_pre_hook(interrupt)
    _p, result = txt2img(module, enabled())
    handle.remove()
    assert "interrupted during the inversion" in result.info
    assert hook_count(model) == 0


@pytest.mark.parametrize("setting", ["batch_cond_uncond", "unequal_lengths"])
def test_results_do_not_depend_on_how_a1111_batches_rows(webui, setting):
    """Invariant 10 end to end: one call of all rows, calls of B rows, or cond and uncond apart."""
    _, module = webui
    _, together = txt2img(module, enabled(), batch_size=2)
    if setting == "batch_cond_uncond":
        shared.opts.batch_cond_uncond = False
        _, apart = txt2img(module, enabled(), batch_size=2)
    else:  # a negative prompt over 75 tokens: A1111 calls cond and uncond rows separately
        long_negative = " ".join(["blurry"] * 80)
        _, apart = txt2img(module, enabled(), batch_size=2, negative_prompt=long_negative)
        _, together = txt2img(module, enabled(), batch_size=2, negative_prompt=long_negative,
                              prompt="a cat " + " ".join(["sharp"] * 80))
        shared.opts.batch_cond_uncond = False
        _, apart = txt2img(module, enabled(), batch_size=2, negative_prompt=long_negative,
                           prompt="a cat " + " ".join(["sharp"] * 80))
    for i in range(2):
        assert np.abs(pixels(together, i) - pixels(apart, i)).max() <= 1


def test_an_image_does_not_depend_on_its_batch(webui):
    """Invariant 18 end to end: image 1 of a batch of 2 equals the same seed generated alone."""
    _, module = webui
    _, batch = txt2img(module, enabled(), batch_size=2, seed=10)
    _, alone = txt2img(module, enabled(), seed=11)
    assert np.abs(pixels(batch, 1) - pixels(alone)).max() <= 1


def test_an_image_does_not_depend_on_its_batch_with_an_and_prompt(webui):
    """Invariant 18 with an AND prompt, AdaIN on (the variation steps above t = 600): A1111 puts each image's two
    cond rows before the B uncond rows, so the rows that hold each image's own latent (what k-diffusion's AdaIN
    converts with) are the last B ones."""
    _, module = webui
    prompt = "a cat AND a dog:0.5"
    _, batch = txt2img(module, enabled(), batch_size=3, seed=10, prompt=prompt)
    for i in range(3):
        _, alone = txt2img(module, enabled(), seed=10 + i, prompt=prompt)
        assert np.abs(pixels(batch, i) - pixels(alone)).max() <= 1, f"image {i + 1} of the batch"


def test_skipped_uncond_rows_route_correctly(webui):
    """With uncond rows dropped early (skip early CFG), calls hold cond rows only: the cursor must still
    give them the reference-cond row, so the result equals the batch_cond_uncond-off run."""
    model, module = webui
    shared.opts.skip_early_cond = 0.5
    _, plain = txt2img(module, None)
    _, together = txt2img(module, enabled(), batch_size=2)
    shared.opts.batch_cond_uncond = False
    _, apart = txt2img(module, enabled(), batch_size=2)
    assert not np.array_equal(pixels(plain), pixels(together))
    for i in range(2):
        assert np.abs(pixels(together, i) - pixels(apart, i)).max() <= 1
    assert hook_count(model) == 0 and not errors.exception_records


@pytest.mark.parametrize("sampler", ["Euler a", "Heun", "DPM2", "DPM++ 2M", "DDIM"])
def test_every_sampler_family_runs_with_rival(webui, sampler):
    model, module = webui
    _, plain = txt2img(module, None, sampler_name=sampler)
    _, result = txt2img(module, enabled(), sampler_name=sampler)
    assert not np.array_equal(pixels(plain), pixels(result))
    assert hook_count(model) == 0 and not errors.exception_records


def test_the_chain_is_reused_for_the_same_inputs(webui):
    _, module = webui
    _, first = txt2img(module, enabled())
    _, second = txt2img(module, enabled())
    assert len(CHAINS) == 1 and "chain from cache" in second.info
    assert np.array_equal(pixels(first), pixels(second))
    txt2img(module, enabled(), steps=7)
    assert len(CHAINS) == 2


def test_api_dict_with_base64_reference(webui):
    _, module = webui
    buffer = io.BytesIO()
    reference_image().save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    _, from_api = txt2img(module, {"enabled": True, "reference_image": data_url, "preset": "prompt_guided"})
    _, from_ui = txt2img(module, [True, reference_image(), False, "Prompt-guided (style transfer)"])
    assert np.array_equal(pixels(from_api), pixels(from_ui))
    assert "RIVAL early plain: 960" in from_api.info


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"enabled": True, "t_algn": 3}, "unknown field"),
        ({"enabled": True, "reference_image": "not base64!"}, "not valid base64"),
        ({"enabled": True, "reference_image": base64.b64encode(b"text").decode()}, "not an image"),
        ({"enabled": True}, "no reference image"),
        ({"enabled": True, "reference_image": None, "t_align": float("nan")}, "t_align"),
        ({"enabled": True, "t_early": 1200}, "t_early"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": True, "preset": "portrait"}, "unknown preset"),
        ({"enabled": True, "init_latent": "random"}, "init_latent"),
    ],
)
def test_bad_api_input_stops_with_a_named_422_error(webui, values, message):
    model, module = webui
    with pytest.raises(RivalInputError, match=message) as caught:
        txt2img(module, values)
    assert caught.value.status_code == 422
    assert hook_count(model) == 0


@pytest.mark.ui
def test_infotext_is_pasted_back_into_the_panel(webui):
    _, module = webui
    import gradio as gr

    script = module.RivalScript()
    script.is_img2img = False
    with gr.Blocks():
        components = script.ui(False)
    assert len(components) == len(FIELDS)
    _, result = txt2img(module, enabled(preset="editing", t_align=500))
    from modules.infotext_utils import parse_generation_parameters

    params = parse_generation_parameters(result.info)
    values = {}
    for component, key in script.infotext_fields:
        value = key(params) if callable(key) else params.get(key)
        values[FIELDS[components.index(component)]] = value
    # t_align 500 is not the Editing preset's: the infotext records Custom with every value used
    assert values["enabled"] is True and values["preset"] == "Custom"
    assert float(values["t_align"]) == 500 and float(values["early_plain"]) == 900
    assert values["init_latent"] == "inverted latent (editing)"
    _, result = txt2img(module, enabled(preset="editing"))
    assert "RIVAL: editing" in result.info


@pytest.mark.ui
def test_the_panel_builds_for_the_api_defaults(webui):
    _, module = webui
    runner = scripts.ScriptRunner([module.RivalScript()])
    defaults = runner.default_script_args()
    assert len(defaults) == 1 + len(FIELDS) and defaults[1] is False


def test_xyz_overrides_apply_per_cell(webui):
    _, module = webui
    from rival_ext.webui import xyz

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", steps=6, width=64, height=64, seed=3,
                                                    sampler_name="Euler")
    xyz.setter("t_align", float)(p, "450", None)
    xyz.setter("enabled", xyz._bool)(p, "True", None)
    xyz.setter("attention_strength", float)(p, "-0.5", None)
    xyz.setter("layers", str)(p, "output.1", None)
    runner = scripts.ScriptRunner([module.RivalScript()])
    p.scripts = runner
    p.script_args = runner.script_args_for([[{"enabled": False, "reference_image": reference_image()}]])
    result = processing.process_images(p)
    assert "RIVAL t_align: 450" in result.info
    assert "RIVAL attention strength: -0.5" in result.info and "RIVAL layers: output.1" in result.info


def test_reconstruction_is_added_to_the_gallery(webui):
    _, module = webui
    _, result = txt2img(module, enabled(show_reconstruction=True))
    assert len(result.images) == 2 and "reconstruction" in result.infotexts[-1]


@pytest.mark.host("a1111")
def test_unsupported_model_runs_without_rival_and_says_so(webui):
    model, module = webui
    model.model.conditioning_key = "hybrid"
    _, plain = txt2img(module, None)
    _, result = txt2img(module, enabled())
    assert np.array_equal(pixels(plain), pixels(result))
    assert "RIVAL notes" in result.info and "not supported" in result.info


@pytest.mark.parametrize(
    ("mode", "sampler"), [("txt2img", "Euler"), ("txt2img", "DDIM"), ("img2img", "Euler"), ("img2img", "DDIM")]
)
def test_initial_latent_starts_on_the_chain(webui, mode, sampler):
    """With the inverted-latent start, the sampler's first model input is the chain's top, whatever
    A1111 multiplies or adds to the noise (sigma_0 in txt2img, the init latent in img2img)."""
    _model, module = webui
    seen = []
    script_callbacks.on_cfg_denoiser(lambda params: seen.append((params.x[-1].clone(), float(params.sigma[-1]))))
    rival = enabled(init_latent="inverted")
    if mode == "txt2img":
        txt2img(module, rival, sampler_name=sampler)
    else:
        img2img(module, {**rival, "reference_image": None, "use_init_image": True}, sampler_name=sampler)
    chain = next(iter(CHAINS._items.values()))
    first, sigma = seen[0]
    expected = chain.top.float()
    if sampler == "DDIM":  # VP latents: the top divided by sqrt(1 + sigma_0^2)
        expected = expected * float((1 + float(chain.sigmas[0]) ** 2) ** -0.5)
        if FORGE:  # Forge's callbacks see them in VE at the call's own level (img2img: one below sigma_0)
            first = first / (1 + sigma**2) ** 0.5
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)


def test_img2img_disabled_is_identical_and_enabled_differs(webui):
    model, module = webui
    _, absent = img2img(module, None)
    _, disabled = img2img(module, {"enabled": False})
    _, on = img2img(module, {"enabled": True, "use_init_image": True})
    assert np.array_equal(pixels(absent), pixels(disabled))
    assert not np.array_equal(pixels(absent), pixels(on))
    assert hook_count(model) == 0 and not errors.exception_records


def test_inpainting_keeps_the_unmasked_region_on_the_reference(webui):
    model, module = webui
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # left half: regenerate
    samples = []
    module_post = module.RivalScript.post_sample

    def record(self, p, ps, *args):
        module_post(self, p, ps, *args)
        samples.append(ps.samples.clone())

    module.RivalScript.post_sample = record
    _p, _result = img2img(module, {"enabled": True, "use_init_image": True, "preset": "inpainting"}, mask=mask)
    chain = next(iter(CHAINS._items.values()))
    keep = samples[0][0][:, :, 4:]
    torch.testing.assert_close(keep, chain.origin_latent.float()[:, :, 4:], rtol=0, atol=1e-6)
    assert hook_count(model) == 0


def test_inpainting_preset_without_a_mask_is_refused(webui):
    _, module = webui
    with pytest.raises(RivalInputError, match="inpaint tab"):
        img2img(module, {"enabled": True, "use_init_image": True, "preset": "inpainting"})


def test_hires_pass_off_by_default_and_on_when_asked(webui):
    model, module = webui
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 4,
             "denoising_strength": 0.6}
    _, off = txt2img(module, enabled(), **hires)
    assert "off in the hires pass" in off.info
    _, on = txt2img(module, enabled(apply_to_hires=True), **hires)
    assert "off in the hires pass" not in on.info and "RIVAL hires: True" in on.info
    assert not np.array_equal(pixels(off), pixels(on))
    assert hook_count(model) == 0 and not errors.exception_records


def test_feature_cache_setting_replays_the_reference_exactly(webui, monkeypatch):
    model, module = webui
    monkeypatch.setattr(shared.opts, "rival_feature_cache", True, raising=False)
    rows = []
    handle = unet_of(model).input_blocks[0][0].register_forward_pre_hook(
        lambda _m, args: rows.append(args[0].shape[0]))
    _, first = txt2img(module, enabled())
    first_rows, rows[:] = list(rows), []
    _, second = txt2img(module, enabled())
    handle.remove()
    assert np.abs(pixels(first) - pixels(second)).max() <= 1
    assert max(first_rows) == 4 and set(rows) == {2}  # two reference rows carried once, then replayed
    assert hook_count(model) == 0


@pytest.mark.ui
def test_settings_are_registered(webui):
    from rival_ext.webui import settings

    settings.add_settings()
    for key in ("rival_default_preset", "rival_chain_cache_entries", "rival_chain_cache_mb", "rival_feature_cache"):
        assert key in shared.opts.data_labels


@pytest.mark.ui
def test_use_the_selected_result_reads_every_gallery_form(tmp_path):
    import gradio as gr

    from rival_ext.webui.ui import selected_image

    path = tmp_path / "result.png"
    reference_image().save(path)
    buffer = io.BytesIO()
    reference_image().save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    expected = np.asarray(reference_image())
    cache_busted = f"{path}?1796046821.18"  # A1111's gallery paths end in ?<mtime>
    for gallery, index in (([{"name": str(path)}], 0), ([[str(path), "caption"]], 0), ([str(path), data_url], 1),
                           ([{"name": cache_busted, "data": None, "is_file": True}], 0), ([cache_busted], 0)):
        assert np.array_equal(np.asarray(selected_image(index, gallery).convert("RGB")), expected)
    with pytest.warns(UserWarning, match="gallery is empty"):  # gr.Warning: a toast in the browser
        assert selected_image(0, []) == gr.update()


@pytest.mark.host("a1111")
def test_with_a_controlnet_style_unet_forward_the_reference_runs_apart(webui):
    """ControlNet replaces the UNet's instance forward and sizes its hints by the call's rows."""
    model, module = webui
    _, in_call = txt2img(module, enabled(), batch_size=2)
    unet = unet_of(model)
    class_forward, seen = unet.forward, []

    def controlnet_like(x, *args, **kwargs):
        seen.append(x.shape[0])
        return class_forward(x, *args, **kwargs)

    unet.forward = controlnet_like
    try:
        _, apart = txt2img(module, enabled(), batch_size=2)
    finally:
        del unet.forward
    assert set(seen) == {4}  # only the generated rows (2 images x 2; the chain is cached): never more
    for i in range(2):
        assert np.abs(pixels(in_call, i) - pixels(apart, i)).max() <= 1
    assert hook_count(model) == 0


def test_xyz_axes_are_registered_once_on_the_xyz_script(webui, monkeypatch):
    """A1111 finds its X/Y/Z script in ``scripts.scripts_data``; RIVAL appends its axes there."""
    import types
    from collections import namedtuple

    from rival_ext.webui import xyz

    axis = namedtuple("AxisOption", ["label", "type", "apply", "choices"], defaults=[None])
    xyz_module = types.SimpleNamespace(AxisOption=axis, axis_options=[])
    entry = types.SimpleNamespace(script_class=type("Script", (), {"__module__": "xyz_grid.py"}), module=xyz_module)
    monkeypatch.setattr(scripts, "scripts_data", [entry], raising=False)
    assert xyz.register_axes() and xyz.register_axes()
    labels = [o.label for o in xyz_module.axis_options]
    assert labels == ["[RIVAL] Enabled", "[RIVAL] Preset", "[RIVAL] t_align", "[RIVAL] t_early", "[RIVAL] Early plain",
                      "[RIVAL] Attention strength", "[RIVAL] AdaIN strength", "[RIVAL] Layers"]
    p = types.SimpleNamespace()
    xyz_module.axis_options[2].apply(p, 450.0, None)
    assert xyz.overrides_of(p) == {"t_align": 450.0}

"""What the real A1111 v1.10.1 does that the stub once hid (see the design's a1111-observed.md).

API args padded with the panel's defaults, the HTTP status read from the exception's instance
attributes, SDXL's VAE returning a sampled tensor, ``p.sample`` across batch count and under another
extension's wrapper, ControlNet's instance forward during the inversion, per-tensor precision restore,
the official clean level on the DDIM schedule, and inpainting on the inpainted image's own chain.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from fake_model import FakeSgmFirstStage
from harness import CHAINS, enabled, hook_count, img2img, pixels, reference_image, txt2img
from modules import processing, script_callbacks, scripts, shared
from modules.api import api
from PIL import Image

from rival_ext.a1111.model import encode_reference, full_precision, no_autocast
from rival_ext.webui import extension
from rival_ext.webui.args import FIELDS, RivalInputError, panel_defaults, parse_args


def _spy_args(monkeypatch) -> list:
    seen = []
    start = extension.start

    def spy(p, args, *rest):
        seen.append(tuple(args))
        return start(p, args, *rest)

    monkeypatch.setattr(extension, "start", spy)
    return seen


def test_an_api_dict_arrives_padded_with_the_panel_defaults_and_is_accepted(webui, monkeypatch):
    _, module = webui
    seen = _spy_args(monkeypatch)
    _, absent = txt2img(module, None)
    _, disabled = txt2img(module, {"enabled": False})
    _, on = txt2img(module, enabled())
    assert len(seen[0]) == len(FIELDS) and isinstance(seen[0][0], dict)
    assert list(seen[0][1:]) == list(panel_defaults("variation").values())[1:]
    assert np.array_equal(pixels(absent), pixels(disabled))
    assert "RIVAL: variation" in on.info


def test_the_padding_follows_the_default_preset_setting(webui, monkeypatch):
    _, module = webui
    monkeypatch.setitem(shared.opts.data, "rival_default_preset", "prompt_guided")
    _, result = txt2img(module, enabled(preset="variation"))
    assert "RIVAL: variation" in result.info and "RIVAL early plain: 1000" in result.info


def test_a_dict_followed_by_other_values_is_refused_naming_the_position(webui):
    model, module = webui
    runner = scripts.ScriptRunner([module.RivalScript()])
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", steps=3, width=64, height=64)
    p.scripts = runner
    p.script_args = api.init_script_args(runner, {"RIVAL": {"args": [enabled(), None, True]}})
    with pytest.raises(RivalInputError, match=r"args\[2\] \(use_init_image\)") as caught:
        processing.process_images(p)
    assert api.handle_exception(caught.value)[0] == 422
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"enabled": True, "reference_image": "not base64!"}, "reference_image"),
        ({"enabled": True}, "reference_image"),
        ({"enabled": True, "t_early": 1200}, "t_early"),
        ({"enabled": True, "t_algn": 3}, "t_algn"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_bad_input_is_answered_4xx_naming_the_field(webui, values, field):
    _, module = webui
    with pytest.raises(RivalInputError) as caught:
        txt2img(module, values)
    status, body = api.handle_exception(caught.value)
    assert status == 422 and field in body["detail"]


def test_an_out_of_range_value_reads_as_readme_says():
    with pytest.raises(RivalInputError, match=r"t_align must be a number in \[0, 1000\], got 2000"):
        parse_args([{"enabled": True, "t_align": 2000}])


def test_sdxl_reference_latent_is_the_scaled_posterior_mean():
    """sgm's encode_first_stage returns a *sampled* plain tensor (which also has a ``.mode()`` method)."""
    torch.manual_seed(0)
    model = FakeSgmFirstStage()
    pixels_ = torch.rand(1, 3, 64, 64) * 2 - 1
    latent = encode_reference(model, pixels_)
    mean = model.first_stage_model.enc(torch.nn.functional.avg_pool2d(pixels_, 8))
    assert torch.equal(latent, model.scale_factor * mean)
    assert torch.equal(encode_reference(model, pixels_), latent)
    assert model.first_stage_model.regularization.sample is True  # the regularizer is left as it was


def test_sd1_reference_latent_is_the_scaled_posterior_mean(webui):
    model, _ = webui
    pixels_ = torch.rand(1, 3, 64, 64) * 2 - 1
    mean = model.first_stage_model.encode(pixels_).mean
    assert torch.equal(encode_reference(model, pixels_), model.scale_factor * mean)


class _OtherExtension(scripts.Script):
    """Wraps ``p.sample`` in ``process`` before RIVAL does (sd-webui-controlnet does this)."""

    calls = 0

    def title(self):
        return "Other"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        inner = p.sample

        def wrapped(*a, **k):
            _OtherExtension.calls += 1
            return inner(*a, **k)

        p.sample = wrapped
        p.other_wrapper = wrapped

    def postprocess_batch(self, p, *args, **kwargs):
        p.hooks_after_batch.append(hook_count(shared.sd_model))


def test_p_sample_is_restored_exactly_across_batch_count(webui):
    model, module = webui
    active = []
    script_callbacks.on_cfg_denoiser(lambda params: active.append(extension._open is not None))
    _OtherExtension.calls = 0
    runner = scripts.ScriptRunner([_OtherExtension(), module.RivalScript()])
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", negative_prompt="", steps=3, width=64,
                                                    height=64, seed=3, sampler_name="Euler", n_iter=2)
    p.scripts = runner
    p.script_args = runner.script_args_for([[], [enabled()]])
    p.hooks_after_batch = []
    result = processing.process_images(p)
    assert len(result.images) == 2 and _OtherExtension.calls == 2
    assert p.hooks_after_batch == [0, 0]  # each batch's p.sample removed its hooks
    assert len(active) == 6 and all(active)  # RIVAL ran every evaluation of both batches
    assert vars(p)["sample"] is p.other_wrapper
    assert hook_count(model) == 0


def test_the_inversion_bypasses_another_extensions_unet_forward(webui):
    """ControlNet replaces the UNet's forward on the instance in its process(); the official ControlNet
    pipeline inverts the reference with the plain UNet."""
    model, module = webui
    txt2img(module, enabled())
    plain = next(iter(CHAINS._items.values()))
    CHAINS.clear()
    unet = model.model.diffusion_model

    def controlled(x, timesteps=None, context=None, **kwargs):
        return type(unet).forward(unet, x, timesteps, context, **kwargs) + 0.5  # a control residual

    unet.forward = controlled
    try:
        txt2img(module, enabled())
    finally:
        del unet.forward
    controlled_chain = next(iter(CHAINS._items.values()))
    assert torch.equal(controlled_chain.nodes, plain.nodes)
    assert hook_count(model) == 0


def test_full_precision_gives_every_tensor_its_own_dtype_back(webui):
    """A1111's FP8 option keeps float8 weights beside fp16/fp32 norms; a blanket .to() would cast them all."""
    model, _ = webui
    unet = model.model.diffusion_model
    for name, tensor in unet.named_parameters():
        if "norm" in name:
            tensor.data = tensor.data.half()
        elif name.endswith("weight") and tensor.dim() == 2:
            tensor.data = tensor.data.to(torch.float8_e4m3fn)
    before = {name: t.dtype for name, t in [*unet.named_parameters(), *unet.named_buffers()]}
    assert {torch.float8_e4m3fn, torch.float16, torch.float32} <= set(before.values())
    with full_precision(model, None):
        assert all(t.dtype == torch.float32 for t in unet.parameters())
    assert {name: t.dtype for name, t in [*unet.named_parameters(), *unet.named_buffers()]} == before
    with pytest.raises(RuntimeError), full_precision(model, None):
        raise RuntimeError("inversion failed")
    assert {name: t.dtype for name, t in [*unet.named_parameters(), *unet.named_buffers()]} == before


def test_no_autocast_context_on_devices_without_autocast():
    assert isinstance(no_autocast("cpu"), torch.autocast)
    assert not isinstance(no_autocast("mps"), torch.autocast)


def _sigmas_used(monkeypatch) -> list:
    from modules import sd_samplers_kdiffusion

    used = []
    original = sd_samplers_kdiffusion.KDiffusionSampler.get_sigmas

    def spy(self, p, steps):
        sigmas = original(self, p, steps)
        used.append(sigmas.clone())
        return sigmas

    monkeypatch.setattr(sd_samplers_kdiffusion.KDiffusionSampler, "get_sigmas", spy)
    return used


def test_euler_on_the_ddim_schedule_uses_the_official_clean_level(webui, monkeypatch):
    """The official code puts the clean latent at abar_0 (sigma_min): the chain's origin and the sampler's end."""
    model, module = webui
    sigma_min = float(((1 - model.alphas_cumprod[0].double()) / model.alphas_cumprod[0].double()).sqrt())
    used = _sigmas_used(monkeypatch)
    p, _ = txt2img(module, enabled(), scheduler="DDIM")
    chain = next(iter(CHAINS._items.values()))
    assert float(chain.sigmas[-1]) == pytest.approx(sigma_min, rel=1e-6)
    assert float(used[-1][-1]) == pytest.approx(sigma_min, rel=1e-6)  # the sampler ended there too
    assert not p.sampler_noise_scheduler_override  # given back
    CHAINS.clear()
    txt2img(module, enabled(), scheduler="Karras")  # reaches sigma_min itself: the clean latent stays at 0
    assert float(next(iter(CHAINS._items.values())).sigmas[-1]) == 0.0
    txt2img(module, None, scheduler="DDIM")
    assert float(used[-1][-1]) == 0.0  # without RIVAL the schedule is A1111's own


def _keep_trajectory(module, reference: Image.Image, mask: Image.Image) -> list[torch.Tensor]:
    """The keep region of every model input (after RIVAL's cfg_denoiser callback has forced it)."""
    keep = torch.from_numpy(np.asarray(mask.resize((8, 8))) < 128)
    seen = []

    def record(params):
        seen.append(params.x[:, :, keep].clone())

    script_callbacks.on_cfg_denoiser(record)
    try:
        img2img(module, {"enabled": True, "reference_image": reference, "preset": "inpainting"}, mask=mask)
    finally:
        script_callbacks.remove_callbacks_for_function(record)
    return seen


def test_inpainting_keeps_the_unmasked_region_on_the_inpainted_images_chain(webui):
    """With a reference other than the init image, the keep region follows the init image's own chain:
    the same whatever the reference, which then only drives attention and AdaIN."""
    _, module = webui
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # left half: regenerate
    cat = _keep_trajectory(module, reference_image(), mask)
    astronaut = _keep_trajectory(module, Image.fromarray(skimage.data.astronaut()), mask)
    assert len(cat) == len(astronaut) > 0
    for a, b in zip(cat, astronaut):
        assert torch.equal(a, b)


@pytest.mark.parametrize("full_res", [False, True])
def test_inpainting_with_the_init_image_as_reference_inverts_once(webui, full_res):
    """The init image as reference is the picture A1111 inpaints (for "Only masked", the API's default, its crop):
    one inversion serves the reference and the keep region."""
    model, module = webui
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 24))
    _, result = img2img(module, {"enabled": True, "use_init_image": True, "preset": "inpainting"}, mask=mask,
                        inpaint_full_res=full_res)
    assert len(result.images) == 1 and "RIVAL: inpainting" in result.info
    assert ("Inpaint area: Only masked" in result.info) == full_res
    assert len(CHAINS._items) == 1
    assert hook_count(model) == 0


@pytest.mark.parametrize("full_res", [False, True])
def test_the_init_image_as_reference_is_the_picture_a1111_encodes(webui, monkeypatch, full_res):
    """An init image of another aspect ratio is stretched by A1111 (resize mode "Just resize"), and "Only masked"
    encodes the mask's crop: the reference taken from the init image must be that very picture (a centre crop
    moved the keep region's end 0.42 off what A1111 encoded)."""
    model, module = webui
    seen = []
    encode = model.encode_first_stage

    def spy(x):
        seen.append(x.detach().clone())
        return encode(x)

    monkeypatch.setattr(model, "encode_first_stage", spy)
    wide = reference_image().resize((96, 64))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (40, 8, 72, 40))
    img2img(module, {"enabled": True, "use_init_image": True, "preset": "inpainting"}, mask=mask, image=wide,
            inpaint_full_res=full_res)
    a1111_pixels, reference_pixels = seen  # A1111's init encoding, then RIVAL's reference
    torch.testing.assert_close(reference_pixels, a1111_pixels, rtol=0, atol=1e-6)


def test_lowvram_precision_fallback_is_noted(webui):
    _, module = webui
    shared.cmd_opts.medvram = True
    try:
        _, result = txt2img(module, enabled())
    finally:
        shared.cmd_opts.medvram = False
    assert "inversion in the model's precision (--medvram/--lowvram)" in result.info

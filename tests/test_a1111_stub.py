"""The A1111 v1.10.1 miniature in tests/a1111_stub behaves like the real call sequence (quick checks)."""

from __future__ import annotations

import base64
import io
import os
import sys

import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "a1111_stub"))

import fake_model
from modules import (
    errors,
    infotext_utils,
    processing,
    script_callbacks,
    scripts,
    sd_samplers_common,
    shared,
)
from modules.api import api

_MODEL = fake_model.FakeLatentDiffusion(seed=0)




@pytest.fixture(autouse=True)
def webui():
    fake_model.reset_a1111_state()
    shared.sd_model = _MODEL
    yield
    fake_model.reset_a1111_state()


@pytest.fixture
def unet_calls():
    """(rows, context tokens) of every UNet call."""
    calls = []

    def hook(module, args, kwargs):
        calls.append((args[0].shape[0], kwargs["context"].shape[1]))

    handle = _MODEL.model.diffusion_model.register_forward_pre_hook(hook, with_kwargs=True)
    yield calls
    handle.remove()


class Recorder(scripts.Script):
    """AlwaysVisible script that logs every callback with its args."""

    def __init__(self):
        self.log = []

    def title(self):
        return "Recorder"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def _rec(self, name, *args, **kwargs):
        self.log.append((name, args, kwargs))

    def setup(self, p, *args):
        self._rec("setup", *args)

    def before_process(self, p, *args):
        self._rec("before_process", *args)

    def process(self, p, *args):
        self._rec("process", *args)

    def before_process_batch(self, p, *args, **kwargs):
        self._rec("before_process_batch", *args)

    def after_extra_networks_activate(self, p, *args, **kwargs):
        self._rec("after_extra_networks_activate", *args)

    def process_batch(self, p, *args, **kwargs):
        self._rec("process_batch", *args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        self._rec("process_before_every_sampling", *args, hr=p.is_hr_pass, **kwargs)

    def before_hr(self, p, *args):
        self._rec("before_hr", *args)

    def post_sample(self, p, ps, *args):
        self._rec("post_sample", *args, samples=ps.samples)

    def postprocess_batch(self, p, *args, **kwargs):
        self._rec("postprocess_batch", *args)

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        self._rec("postprocess_batch_list", *args)

    def postprocess_image(self, p, pp, *args):
        self._rec("postprocess_image", *args)

    def postprocess(self, p, processed, *args):
        self._rec("postprocess", *args)

    def names(self):
        return [e if isinstance(e, str) else e[0] for e in self.log]


def txt2img(script=None, args=(True, 0.5), **kw):
    params = dict(prompt="a cat", negative_prompt="", seed=1, steps=2, width=32, height=32, sampler_name="Euler",
                  cfg_scale=5.0)
    p = processing.StableDiffusionProcessingTxt2Img(**{**params, **kw})
    if script is not None:
        runner = scripts.ScriptRunner([script])
        p.scripts = runner
        p.script_args = runner.script_args_for([list(args)])
    return p


def register_cfg_log(log):
    script_callbacks.on_cfg_denoiser(lambda params: log.append("cfg_denoiser"))
    script_callbacks.on_cfg_denoised(lambda params: log.append("cfg_denoised"))
    script_callbacks.on_cfg_after_cfg(lambda params: log.append("cfg_after_cfg"))


def test_txt2img_callback_order_and_args():
    rec = Recorder()
    register_cfg_log(rec.log)
    p = txt2img(rec)
    names_during_setup = rec.names()
    res = processing.process_images(p)

    cfg = ["cfg_denoiser", "cfg_denoised", "cfg_after_cfg"]
    expected = ["setup", "before_process", "process", "before_process_batch", "after_extra_networks_activate",
                "process_batch", "process_before_every_sampling", *cfg, *cfg, "post_sample", "postprocess_batch",
                "postprocess_batch_list", "postprocess_image", "postprocess"]
    assert names_during_setup == ["setup"]
    assert rec.names() == expected
    entries = [e for e in rec.log if not isinstance(e, str)]
    assert all(args == (True, 0.5) for _, args, _ in entries)
    pbes = next(kw for name, _, kw in entries if name == "process_before_every_sampling")
    assert pbes["x"] is pbes["noise"] and pbes["x"].shape == (1, 4, 4, 4)
    assert len(res.images) == 1 and res.images[0].size == (32, 32)
    assert "Steps: 2, Sampler: Euler" in res.info


@pytest.mark.parametrize(
    ("kw", "opts", "expected"),
    [
        ({"batch_size": 2}, {}, [(4, 77)] * 2),
        ({"batch_size": 2}, {"batch_cond_uncond": False}, [(2, 77)] * 4),
        ({"batch_size": 2, "prompt": "a AND b:0.5"}, {}, [(6, 77)] * 2),
        ({"batch_size": 2, "prompt": "a AND b"}, {"batch_cond_uncond": False}, [(2, 77)] * 6),
        ({"batch_size": 2, "prompt": "w " * 80}, {}, [(2, 154), (2, 77)] * 2),
        ({"batch_size": 2}, {"skip_early_cond": 1.0}, [(2, 77)] * 2),
        ({"batch_size": 2, "s_min_uncond": 100.0}, {}, [(4, 77), (2, 77)]),
    ],
    ids=["bcu", "no-bcu", "AND", "AND-no-bcu", "long-prompt", "skip-early", "ngms"],
)
def test_cfg_denoiser_layout(unet_calls, kw, opts, expected):
    seen = []

    def on_denoiser(params):
        b = params.x.shape[0] - params.text_uncond.shape[0]
        seen.append((params.x.shape[0], params.denoiser.step, torch.equal(params.x[0], params.x[b])))

    script_callbacks.on_cfg_denoiser(on_denoiser)
    for k, v in opts.items():
        setattr(shared.opts, k, v)
    processing.process_images(txt2img(**kw))
    assert unet_calls == expected
    rows = 6 if "AND" in kw.get("prompt", "") else 4
    assert seen == [(rows, 0, True), (rows, 1, True)]


@pytest.mark.parametrize(("sampler", "steps", "expected"),
                         [("Euler", 3, [0, 0, 1]), ("Heun", 4, [0, 0, 0, 1, 1, 2, 2]), ("DDIM", 4, [0, 0, 1])])
def test_model_calls_and_sampling_step(sampler, steps, expected):
    seen = []
    script_callbacks.on_cfg_denoiser(lambda params: seen.append(params.sampling_step))
    processing.process_images(txt2img(sampler_name=sampler, steps=steps))
    assert seen == expected


def test_ancestral_noise_comes_from_the_seeded_rng():
    def run(seed):
        image = processing.process_images(txt2img(sampler_name="Euler a", seed=seed)).images[0]
        return torch.tensor(list(image.getdata()))

    first = run(1)
    assert torch.equal(first, run(1)) and not torch.equal(first, run(2))


def test_exceptions_in_callbacks_are_swallowed_and_logged(capsys):
    class Broken(Recorder):
        def process(self, p, *args):
            raise ValueError("boom in process")

    def bad_cfg(params):
        raise RuntimeError("boom in cfg")

    script_callbacks.on_cfg_after_cfg(bad_cfg)
    rec = Broken()
    res = processing.process_images(txt2img(rec))
    assert len(res.images) == 1 and rec.names()[-1] == "postprocess"
    err = capsys.readouterr().err
    assert "*** Error running process:" in err and "boom in process" in err
    assert "cfg_after_cfg" in err and "boom in cfg" in err
    assert any(r["exception"] == "boom in process" for r in errors.exception_records)
    script_callbacks.remove_callbacks_for_function(bad_cfg)
    assert script_callbacks.ordered_callbacks("cfg_after_cfg") == []


def test_postprocess_not_reached_when_sampling_raises():
    class Wrapper(Recorder):
        def process(self, p, *args):
            original = p.sample

            def sample(*a, **k):
                try:
                    raise RuntimeError("sampling failed")
                finally:
                    self.log.append("wrapper finally")
                    assert original is not None

            p.sample = sample

    rec = Wrapper()
    with pytest.raises(RuntimeError, match="sampling failed"):
        processing.process_images(txt2img(rec))
    assert "wrapper finally" in rec.log
    assert "post_sample" not in rec.names() and "postprocess" not in rec.names()


def test_interrupt_stops_sampling_but_postprocess_runs(unet_calls):
    script_callbacks.on_cfg_after_cfg(lambda params: shared.state.interrupt())
    rec = Recorder()
    res = processing.process_images(txt2img(rec, steps=4, n_iter=2))
    assert len(unet_calls) == 1  # the second evaluation raises InterruptedException before the UNet
    assert len(res.images) == 1 and rec.names()[-1] == "postprocess"


def test_img2img_mask_steps_and_final_blend(unet_calls):
    rec = Recorder()
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # regenerate the left half
    runner = scripts.ScriptRunner([rec], is_img2img=True)
    p = processing.StableDiffusionProcessingImg2Img(
        prompt="a cat", init_images=[image], mask=mask, seed=3, steps=3, width=32, height=32,
        sampler_name="Euler", denoising_strength=0.5, inpaint_full_res=False, inpainting_fill=1)
    p.scripts, p.script_args = runner, runner.script_args_for([[]])
    assert p.image_mask is mask and p.mask is None
    processing.process_images(p)

    assert len(unet_calls) == 2  # steps 3, denoising 0.5 -> t_enc 1 -> 2 evaluations
    assert sd_samplers_common.setup_img2img_steps(p) == (3, 1)
    pbes = next(kw for name, _, kw in rec.log if name == "process_before_every_sampling")
    assert pbes["x"] is p.init_latent and pbes["noise"] is not pbes["x"]
    assert p.mask.shape == p.nmask.shape == (4, 4, 4)
    assert torch.equal(p.nmask[:, :, :2], torch.ones(4, 4, 2)) and torch.equal(p.mask[:, :, 2:], torch.ones(4, 4, 2))
    samples = next(kw for name, _, kw in rec.log if name == "post_sample")["samples"]
    assert torch.allclose(samples[:, :, :, 2:], p.init_latent[:, :, :, 2:])


def test_hires_pass_calls_before_every_sampling_twice():
    rec = Recorder()
    p = txt2img(rec, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2, denoising_strength=0.5)
    res = processing.process_images(p)
    calls = [(name, kw) for name, _, kw in rec.log if name in ("before_hr", "process_before_every_sampling")]
    assert [c[0] for c in calls] == ["process_before_every_sampling", "before_hr", "process_before_every_sampling"]
    assert [kw["hr"] for name, kw in calls if kw] == [False, True]
    assert calls[2][1]["x"].shape == (1, 4, 8, 8) and res.images[0].size == (64, 64)


def test_schedules():
    p = txt2img(scheduler="DDIM")
    sampler = processing.sd_samplers.create_sampler("Euler", _MODEL)
    sigmas = sampler.get_sigmas(p, 4)
    expected = sampler.model_wrap.sigmas[torch.tensor([751, 501, 251, 1])]
    assert torch.allclose(sigmas[:-1], expected) and sigmas[-1] == 0
    t = sampler.model_wrap.sigma_to_t(sigmas[:-1])
    assert torch.allclose(t, torch.tensor([751.0, 501.0, 251.0, 1.0]), atol=1e-3)
    ddim = processing.sd_samplers.create_sampler("DDIM", _MODEL)
    assert ddim.get_timesteps(p, 20).tolist() == list(range(1, 1000, 50))
    karras = sampler.get_sigmas(txt2img(scheduler="Karras"), 5)
    assert karras[0] == pytest.approx(sampler.model_wrap.sigma_max.item()) and len(karras) == 6


def test_infotext_and_base64_helpers():
    assert infotext_utils.quote("a, b") == '"a, b"' and infotext_utils.quote("ab") == "ab"
    parsed = infotext_utils.parse_generation_parameters(
        'a cat\nNegative prompt: ugly\nSteps: 20, Size: 512x768, RIVAL: "x: 1, y", CFG scale: 7')
    assert parsed["Prompt"] == "a cat" and parsed["Negative prompt"] == "ugly"
    assert parsed["Size-1"] == "512" and parsed["Size-2"] == "768" and parsed["RIVAL"] == "x: 1, y"

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    assert api.decode_base64_to_image("data:image/png;base64," + b64).getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(api.HTTPException) as e:
        api.decode_base64_to_image("not an image")
    assert e.value.status_code == 500

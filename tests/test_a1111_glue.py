"""Mutation-killing checks of the job (``rival_ext/job.py``) through the A1111 stub that whole-image tests missed.

Each test names the plausible bug it catches; the mutation table is in the project report.
"""

from __future__ import annotations

import pytest
import torch
from harness import enabled, img2img, txt2img
from modules import script_callbacks, shared
from PIL import Image

from rival_ext.job import CHAINS


def _keep_inputs(module, sampler: str) -> tuple[list[tuple[float, torch.Tensor]], torch.Tensor]:
    """(the denoiser's sigma/t, the keep region of the model input) at every evaluation, and the keep mask."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # left half: regenerate
    keep = torch.zeros(8, 8, dtype=torch.bool)
    keep[:, 4:] = True
    seen = []

    def record(params):  # registered after RIVAL's callback, which forces the keep region
        seen.append((float(params.sigma.reshape(-1)[0]), params.x[-1][:, keep].clone()))

    script_callbacks.on_cfg_denoiser(record)
    try:
        img2img(module, {"enabled": True, "use_init_image": True, "preset": "inpainting"}, mask=mask,
                sampler_name=sampler)
    finally:
        script_callbacks.remove_callbacks_for_function(record)
    return seen, keep


@pytest.mark.parametrize("sampler", ["DDIM", "Euler"])
def test_the_keep_region_is_on_the_chain_at_every_model_input(webui, sampler):
    """Kills: keep region not forced per step (only the final overwrite); forced with the VE latent under DDIM
    (``reference_at`` where ``reference_vp`` belongs: off by sqrt(1 + sigma^2))."""
    _, module = webui
    seen, keep = _keep_inputs(module, sampler)
    chain = next(iter(CHAINS._items.values()))  # use_init_image, whole picture: one chain
    schedule_sigma = shared.sd_model.alphas_cumprod.double()
    assert len(seen) > 1
    for raw, region in seen:
        if sampler == "DDIM":  # the denoiser's "sigma" is the timestep, latents VP
            abar = float(schedule_sigma[round(raw)])
            expected = chain.reference_vp(((1 - abar) / abar) ** 0.5)
        else:
            expected = chain.reference_at(raw)
        torch.testing.assert_close(region.double(), expected[:, keep].double(), rtol=1e-5, atol=1e-5)


def test_changing_the_inversion_precision_inverts_again(webui):
    """Kills: the precision setting left out of the chain-cache key (a stale chain after a settings change)."""
    _, module = webui
    shared.opts.data["rival_inversion_precision"] = "fp32"
    txt2img(module, enabled())
    shared.opts.data["rival_inversion_precision"] = "model"
    _, result = txt2img(module, enabled())
    assert "chain from cache" not in result.info
    assert len(CHAINS._items) == 2


def test_the_hires_chain_is_built_on_the_hires_steps(webui):
    """Kills: the hires pass's chain built on ``p.steps`` instead of ``hr_second_pass_steps``: the chain must
    have one segment per model call of the hires pass (Euler: one call a step)."""
    _, module = webui
    calls = []

    def count(params):
        calls.append(bool(params.denoiser.p.is_hr_pass))

    script_callbacks.on_cfg_denoiser(count)
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 3,
             "denoising_strength": 0.6}
    try:
        txt2img(module, enabled(apply_to_hires=True), steps=6, **hires)
    finally:
        script_callbacks.remove_callbacks_for_function(count)
    hires_calls = sum(calls)
    assert 0 < hires_calls < calls.count(False)
    hires_chain = [c for c in CHAINS._items.values() if c.nodes.shape[-1] == 16]
    assert len(hires_chain) == 1 and hires_chain[0].steps == hires_calls


def _first_model_inputs(run) -> list[torch.Tensor]:
    """The denoiser's ``x`` (all rows, after RIVAL's callback) at the first evaluation of each sampling pass."""
    seen = []

    def record(params):
        if params.denoiser.step == 0:
            seen.append(params.x.clone())

    script_callbacks.on_cfg_denoiser(record)
    try:
        run()
    finally:
        script_callbacks.remove_callbacks_for_function(record)
    return seen


def test_v_prediction_eps_uses_abar_of_the_timestep(webui, monkeypatch):
    """Kills: a wrong v -> eps conversion in ``A1111Eps`` (abar = vp_scale instead of its square, swapped
    sqrt(abar)/sqrt(1 - abar) terms): eps = sqrt(abar) v + sqrt(1 - abar) z, as A1111's
    ``CompVisTimestepsVDenoiser`` (sd_samplers_timesteps.py) computes it."""
    from rival_ext.a1111.model import A1111Eps, encode_text, schedule_of

    model, _ = webui
    monkeypatch.setattr(model, "parameterization", "v")
    from rival_ext import Conditioning

    context = encode_text(model, "a cat", negative=False, width=64, height=64).context.expand(2, -1, -1)
    cond = Conditioning(context)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100.0, 700.0])
    eps = A1111Eps(model, schedule_of(model))(z, t, cond)
    v = model.apply_model(z, t, {"c_crossattn": [context]})
    abar = model.alphas_cumprod[t.long()].double().reshape(-1, 1, 1, 1)
    expected = abar.sqrt() * v.double() + (1 - abar).sqrt() * z.double()
    torch.testing.assert_close(eps.double(), expected, rtol=1e-4, atol=1e-5)


def test_sdxl_reference_uncond_is_encoded_as_a1111_encodes_an_empty_negative(webui, monkeypatch):
    """Kills: the reference-uncond row for an empty reference text taken from the cond (right for SD1, where
    "" encodes the same either way) also for SDXL, where A1111 zeroes an all-empty negative
    (sd_models_xl.get_learned_conditioning: force_zero_embeddings)."""
    from rival_ext import job

    model, module = webui
    monkeypatch.setattr(model, "is_sdxl", True)
    encode = model.get_learned_conditioning

    def sdxl_like(batch):
        out = encode(batch)
        if getattr(batch, "is_negative_prompt", False) and all(x == "" for x in batch):
            out = torch.zeros_like(out)
        return out

    monkeypatch.setattr(model, "get_learned_conditioning", sdxl_like)
    seen = []
    reference = job.Reference

    def spy(chain, cond, uncond, *args):
        seen.append((cond, uncond))
        return reference(chain, cond, uncond, *args)

    monkeypatch.setattr(job, "Reference", spy)
    txt2img(module, enabled(reference_prompt="null"))
    (cond, uncond), = seen
    assert cond.context.abs().max() > 0 and uncond.context.abs().max() == 0


@pytest.mark.parametrize("sgm", [False, True])
def test_the_txt2img_start_does_not_depend_on_sgm_noise_multiplier(webui, sgm):
    """Kills: ``set_initial_latent`` ignoring ``sgm_noise_multiplier`` (A1111's KDiffusionSampler.sample then
    scales x by sqrt(1 + sigma0^2), not sigma0): the first model input must be the chain's start either way."""
    _, module = webui
    shared.opts.data["sgm_noise_multiplier"] = sgm
    seen = _first_model_inputs(lambda: txt2img(module, enabled(init_latent="inverted")))
    chain = next(iter(CHAINS._items.values()))
    torch.testing.assert_close(seen[0][-1].double(), chain.top.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_the_img2img_start_is_the_chains_top(webui, sampler):
    """Kills: a wrong rewrite of img2img's noise (k-diffusion: xi = x + noise * sigma0; DDIM: xi = sqrt(abar) x
    + sqrt(1 - abar) noise), e.g. the init latent left out: the first model input must be the chain's top."""
    from rival_ext.noise import vp_scale

    _, module = webui
    seen = _first_model_inputs(lambda: img2img(module, enabled(init_latent="inverted"), sampler_name=sampler))
    chain = next(iter(CHAINS._items.values()))
    expected = chain.top.double()
    if sampler == "DDIM":  # VP latents
        expected = expected * float(vp_scale(float(chain.sigmas[0])))
    torch.testing.assert_close(seen[0][-1].double(), expected, rtol=1e-5, atol=1e-5)


def test_each_image_of_a_batch_starts_from_its_own_seed(webui):
    """Kills: every image of a batch started with the first image's seed (or seeds shifted): image 2 of a
    batch at seed 3 must start exactly as a single image at seed 4 (A1111: all_seeds = seed + i)."""
    _, module = webui
    batch = _first_model_inputs(lambda: txt2img(module, enabled(), batch_size=2))[0]
    single = _first_model_inputs(lambda: txt2img(module, enabled(), seed=4))[0]
    assert not torch.equal(batch[-2], batch[-1])
    torch.testing.assert_close(batch[-1], single[-1])


def test_each_batch_of_a_batch_count_starts_from_its_own_seeds(webui):
    """Kills: the start seeds read from ``p.all_seeds`` (the whole job's) instead of ``p.seeds`` (this batch's):
    batch 2 of a batch count at seed 3 must start exactly as a single image at seed 4."""
    _, module = webui
    second = _first_model_inputs(lambda: txt2img(module, enabled(), n_iter=2))[1]
    single = _first_model_inputs(lambda: txt2img(module, enabled(), seed=4))[0]
    torch.testing.assert_close(second[-1], single[-1])


def test_the_progress_text_is_given_back_after_the_inversion(webui):
    """Kills: ``shared.state.textinfo`` left at (or restored to) "RIVAL: inverting ..." after the inversion:
    A1111's progress must show its own text while it samples."""
    _, module = webui
    shared.state.textinfo = "A1111's text"
    seen = []

    def record(params):
        seen.append(shared.state.textinfo)

    script_callbacks.on_cfg_denoiser(record)
    try:
        txt2img(module, enabled())
    finally:
        script_callbacks.remove_callbacks_for_function(record)
    assert seen and set(seen) == {"A1111's text"}


def test_the_a1111_host_has_every_member_of_the_host_protocol(webui):
    from rival_ext.a1111.model import A1111Host
    from rival_ext.host import Host

    model, _ = webui
    host = A1111Host(model)
    protocols = [c for c in Host.__mro__ if c.__module__ == Host.__module__]  # Host and ModelHost
    members = [n for c in protocols for n in [*vars(c), *vars(c).get("__annotations__", {})] if not n.startswith("_")]
    assert {"align", "schedule", "encode_reference", "encode_text", "eps_model", "full_precision"} <= set(members)
    for name in members:
        assert hasattr(host, name), name
    assert host.fp32_unavailable is None and host.stacked_cfg_rows and callable(host.align)
    assert host.unet is model.model.diffusion_model and host.schedule is host.schedule
    host.check_supported()

"""Mutation-killing checks of the A1111 glue (``rival_ext/a1111/job.py``) that whole-image tests missed.

Each test names the plausible bug it catches; the mutation table is in the project report.
"""

from __future__ import annotations

import pytest
import torch
from a1111_harness import enabled, img2img, txt2img
from modules import script_callbacks, shared
from PIL import Image

from rival_ext.a1111.job import CHAINS


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
def test_the_keep_region_is_on_the_chain_at_every_model_input(a1111, sampler):
    """Kills: keep region not forced per step (only the final overwrite); forced with the VE latent under DDIM
    (``reference_at`` where ``reference_vp`` belongs: off by sqrt(1 + sigma^2))."""
    _, module = a1111
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


def test_changing_the_inversion_precision_inverts_again(a1111):
    """Kills: the precision setting left out of the chain-cache key (a stale chain after a settings change)."""
    _, module = a1111
    shared.opts.data["rival_inversion_precision"] = "fp32"
    txt2img(module, enabled())
    shared.opts.data["rival_inversion_precision"] = "model"
    _, result = txt2img(module, enabled())
    assert "chain from cache" not in result.info
    assert len(CHAINS._items) == 2


def test_the_hires_chain_is_built_on_the_hires_steps(a1111):
    """Kills: the hires pass's chain built on ``p.steps`` instead of ``hr_second_pass_steps``: the chain must
    have one segment per model call of the hires pass (Euler: one call a step)."""
    _, module = a1111
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

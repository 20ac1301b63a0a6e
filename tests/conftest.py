"""Shared fixtures: the real ldm UNet in small configurations, with every parameter random."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rival_ext import Conditioning, DiscreteSchedule, UNetEps

CONTEXT_DIM = 32

# The test models are tiny: one thread avoids OpenMP spin-waits that make them 10x slower on 2 cores.
torch.set_num_threads(1)

# CI draws the same property-test examples every run (a failure there is then reproducible); a local
# run explores new ones, and what it finds becomes a named test.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def make_unet(dtype: torch.dtype = torch.float64, seed: int = 0, depth: int = 1):
    """A small SD1-like ldm UNet; ldm zero-initialises output layers, so everything is re-drawn."""
    import ldm.modules.attention
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    ldm.modules.attention._ATTN_PRECISION = "model"  # "fp32" would force float64 scores to float32

    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=16,
        in_channels=4,
        out_channels=4,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=[1, 2],
        channel_mult=[1, 2],
        num_heads=2,
        use_spatial_transformer=True,
        transformer_depth=depth,
        context_dim=CONTEXT_DIM,
        legacy=False,
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / max(1, p[0].numel()) ** 0.5))
    unet = unet.to(dtype).eval()
    unet.dtype = dtype  # ldm casts its input to this attribute
    # ldm builds the sinusoidal time embedding in float32; feed it to time_embed in the model dtype.
    unet.time_embed.register_forward_pre_hook(lambda _m, args: (args[0].to(dtype),))
    # ldm's GroupNorm32 computes in float32 whatever the model dtype; run it in the model dtype.
    for module in unet.modules():
        if type(module).__name__ == "GroupNorm32":
            module.forward = torch.nn.GroupNorm.forward.__get__(module)
    for p in unet.parameters():
        p.requires_grad_(False)
    return unet


@pytest.fixture(scope="session")
def schedule() -> DiscreteSchedule:
    return DiscreteSchedule.stable_diffusion()


@pytest.fixture(scope="session")
def unet64():
    return make_unet(torch.float64)


@pytest.fixture(scope="session")
def model64(unet64, schedule):
    return UNetEps(unet64, schedule)


def text(seed: int, rows: int = 1, tokens: int = 77, dtype=torch.float64) -> Conditioning:
    """A deterministic stand-in for an encoded prompt."""
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(rows, tokens, CONTEXT_DIM, generator=g, dtype=dtype))


def photo_latent(name: str = "astronaut", size: int = 16, dtype=torch.float64) -> torch.Tensor:
    """A latent-sized stand-in made from a real photo of skimage.data (4 channels, unit scale)."""
    import skimage.data

    from rival_ext.image import prepare_reference

    pixels = prepare_reference(getattr(skimage.data, name)(), size * 8, size * 8)
    pooled = torch.nn.functional.avg_pool2d(pixels, 8)  # (1,3,size,size)
    fourth = pooled.mean(1, keepdim=True) * 0.5
    latent = torch.cat([pooled, fourth], 1) * 0.9
    return latent.to(dtype)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def webui():
    """Fresh stub WebUI state (``RIVAL_STUB``: A1111 by default), the fake SD1 model loaded, the extension's
    script imported."""
    import fake_model
    from harness import stub_environment

    yield stub_environment()
    fake_model.reset_a1111_state()


def pytest_configure(config):
    config.addinivalue_line("markers", "host(*names): runs only under these stub WebUIs (RIVAL_STUB)")
    config.addinivalue_line("markers", "ui: builds the panel with gradio: runs under the stub WebUI of the installed "
                                       "gradio (3: A1111's, 4: Forge's)")


def ui_host() -> str:
    """The stub WebUI that runs gradio as installed: A1111 (and reForge, Forge Classic) 3.41, Forge 4.40."""
    from importlib.metadata import version

    return "forge" if int(version("gradio").split(".")[0]) >= 4 else "a1111"


def pytest_collection_modifyitems(config, items):
    """Under another stub than A1111 (``RIVAL_STUB``), only the tests written for it run; the rest are deselected
    (they ran in the A1111 run of the same suite). The panel's tests run under the stub of the installed gradio."""
    stub = os.environ.get("RIVAL_STUB", "a1111")
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("host")
        hosts = (ui_host(),) if item.get_closest_marker("ui") else marker.args if marker else ("a1111",)
        (keep if stub in hosts else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (``item.rep_call``): a fixture can act on a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report

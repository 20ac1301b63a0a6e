"""The evaluation session: every hook in and out together, the rows' way to the attention chosen
once, AdaIN only after guidance of an open evaluation (A1111's host: tests/test_a1111_glue.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import photo_latent, text

from rival_ext import KDenoiser, Reference, RivalParams, invert
from rival_ext.feature_cache import FeatureCache
from rival_ext.reference_rows import InCall, Replayed, SeparatePass
from rival_ext.request import RivalRuntimeError
from rival_ext.session import RivalSession


def hook_count(unet: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules())


@pytest.fixture(scope="module")
def reference(model64, schedule) -> Reference:
    chain = invert(photo_latent(), KDenoiser(model64, schedule, text(1)), schedule.ddim_sigmas(2))
    return Reference(chain, text(1), text(2))


def test_the_session_installs_and_removes_every_hook_together(unet64, reference):
    before = hook_count(unet64)
    session = RivalSession(unet64, RivalParams(), reference)
    with session:
        assert session.installed and session.injector.installed
        assert hook_count(unet64) == before + 2 * len(session.injector.layers) + 2  # per layer: context, blend
        with pytest.raises(RuntimeError, match="already installed"):
            session.install()
    assert not session.installed and not session.injector.installed and hook_count(unet64) == before
    with pytest.raises(ZeroDivisionError), session:
        session.begin(1.0, 500.0, ["cond"])
        _ = 1 / 0
    assert hook_count(unet64) == before and session.evaluation is None and session.injector.plan is None


def test_a_session_leaves_an_injector_it_was_given_installed(unet64, reference):
    session = RivalSession(unet64, RivalParams(), reference)
    with session.injector:
        with RivalSession(unet64, RivalParams(), reference, injector=session.injector):
            pass
        assert session.injector.installed


def test_the_rows_way_to_the_attention_follows_the_unet(unet64, reference):
    """In the call by default, replayed with a feature cache, apart while another extension's instance forward
    (ControlNet's) sizes its inputs by the call's rows."""
    def strategy(**kwargs):
        session = RivalSession(unet64, RivalParams(), reference, **kwargs)
        return type(session.rows.apart if session.apart else session.rows.in_call)

    assert strategy() is InCall
    assert strategy(features=FeatureCache(max_bytes=1 << 20)) is Replayed
    assert strategy(separate=True) is SeparatePass
    own = unet64.forward
    unet64.forward = lambda *args, **kwargs: own(*args, **kwargs)  # another extension's instance forward
    try:
        assert strategy() is SeparatePass
        unet64.forward = own  # ControlNet's restore: the class's forward, bound, left on the instance
        assert strategy() is InCall
    finally:
        del unet64.forward


def test_after_guidance_closes_the_evaluation(unet64, reference):
    session = RivalSession(unet64, RivalParams(), reference)
    guided = torch.ones(1, 4, 2, 2)
    assert session.after_guidance(guided) is guided  # no evaluation open: unchanged
    session.begin(1.0, 500.0, ["cond", "uncond"])
    session.evaluation.calls = 1
    assert session.after_guidance(guided) is guided  # no UNet call gave a target: unchanged
    assert session.evaluation is None


def test_an_evaluation_no_model_call_reached_stops_the_generation(unet64, reference):
    """A step whose model calls never went through RIVAL (its hooks or patches bypassed) must not end as a
    silently plain image."""
    session = RivalSession(unet64, RivalParams(), reference)
    session.begin(1.0, 500.0, ["cond", "uncond"])
    with pytest.raises(RivalRuntimeError, match="bypassed"):
        session.after_guidance(torch.ones(1, 4, 2, 2))


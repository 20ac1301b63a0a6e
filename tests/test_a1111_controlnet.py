"""Beside sd-webui-controlnet's reference modes in A1111: a refusal lasts one request, idle leftovers are harmless.

ControlNet (1.1.455, scripts/hook.py ``UnetHook.hook``/``restore``) replaces every transformer block's ``_forward``
for a request with a reference unit and never puts it back until a later request with units: RIVAL must run in
the requests after it as in a fresh WebUI, and refuse (with a note naming the unit) only while a reference unit is
on in the same request.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness import enabled, hook_count, pixels, unet_of
from modules import processing, scripts
from modules.api import api

OWN = "_original_inner_forward_cn_hijack"


class ControlNetStandIn(scripts.Script):
    """What sd-webui-controlnet does to the UNet, as scripts/controlnet.py ``Script.process`` -> ``controlnet_hack``
    -> ``UnetHook.hook`` do it: ``enabled_units`` is this request's units and ``ui_batch_option_state[1]`` its
    StyleAlign box; a request with neither returns at once. With a reference unit or StyleAlign every transformer
    block's ``_forward`` becomes one that calls ``self.attn1`` itself (the block's own kept as
    ``_original_inner_forward_cn_hijack``): over its own context and a bank during the request (here a fixed feature:
    the reference's effect), over all rows of the call at once with StyleAlign; the mode stays what the last hooked
    request set (``attention_auto_machine``). With units but neither, the blocks' own are put back. A request with
    units also replaces the UNet's ``forward`` on the instance (``model.forward = forward_webui``, the old one kept as
    ``_original_forward``) and ``restore`` (``postprocess``, and the start of the next request with units) puts back
    ``model.forward = model._original_forward``: the class's forward, bound, stays on the instance for good."""

    def __init__(self) -> None:
        self.units: list[dict] = []
        self.enabled_units: list[dict] = []
        self.ui_batch_option_state = ("All", False)
        self.mode = None  # "reference" | "style_align", as the last hooked request left it
        self.active = False

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        self.enabled_units = [u for u in self.units if u["enabled"]]
        self.active = False
        style_align = self.ui_batch_option_state[1]
        if not self.enabled_units and not style_align:
            return
        unet = unet_of(p.sd_model)
        self.restore(unet)
        unet._original_forward = unet.forward
        unet.forward = self.forward_webui(unet._original_forward)
        blocks = [m for m in unet_of(p.sd_model).modules() if hasattr(m, "attn1") and hasattr(m, "attn2")]
        if style_align or any("reference" in u["module"] for u in self.enabled_units):
            self.mode = "style_align" if style_align else "reference"
            self.active = self.mode == "reference"
            for block in blocks:
                if getattr(block, OWN, None) is None:
                    setattr(block, OWN, block._forward)
                block._forward = self.hacked.__get__(block)
        else:
            for block in blocks:
                if getattr(block, OWN, None) is not None:
                    block._forward = getattr(block, OWN)

    def postprocess(self, p, processed, *args):
        self.restore(unet_of(p.sd_model))

    @staticmethod
    def restore(unet) -> None:
        if hasattr(unet, "_original_forward"):
            unet.forward = unet._original_forward
            del unet._original_forward

    @staticmethod
    def forward_webui(original):
        def forward(*args, **kwargs):
            return original(*args, **kwargs)

        return forward

    @property
    def hacked(self):
        outer = self

        def forward(block, x, context=None):
            x_norm1 = block.norm1(x)
            if outer.mode == "style_align":  # every row attends to all rows' tokens
                rows, tokens, channels = x_norm1.shape
                attended = block.attn1(x_norm1.reshape(1, rows * tokens, channels)).reshape(rows, tokens, channels)
            else:
                own = x_norm1
                if outer.active:  # Read with a bank: attention over [own, bank]
                    own = torch.cat([x_norm1, torch.full_like(x_norm1, 0.5)], dim=1)
                attended = block.attn1(x_norm1, context=own)
            x = attended + x
            x = block.attn2(block.norm2(x), context=context) + x
            return block.ff(block.norm3(x)) + x

        return forward


def generate(module, controlnet: ControlNetStandIn, rival: dict | None, units: list[dict], style_align=False):
    controlnet.units = units
    controlnet.ui_batch_option_state = ("All", style_align)
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", negative_prompt="ugly", steps=6, width=64,
                                                    height=64, seed=3, sampler_name="Euler", cfg_scale=5)
    runner = scripts.ScriptRunner([controlnet, module.RivalScript()])
    p.scripts, p.is_api = runner, True
    p.script_args = api.init_script_args(runner, {"RIVAL": {"args": [rival or {"enabled": False}]}})
    return processing.process_images(p)


REFERENCE = [{"enabled": True, "module": "reference_only"}]
CANNY = [{"enabled": True, "module": "canny"}]


def leftovers(model) -> int:
    """Transformer blocks whose forward is ControlNet's replacement, not their own."""
    return sum(vars(m).get("_forward", getattr(m, OWN)) is not getattr(m, OWN)
               for m in unet_of(model).modules() if hasattr(m, OWN))


@pytest.mark.parametrize("mode", ["reference", "style_align"])
def test_after_a_reference_request_rival_runs_as_in_a_fresh_webui(webui, mode):
    """The sequence users hit: a ControlNet reference (or StyleAlign) request, then RIVAL requests (none of them with a
    unit). The RIVAL image equals the one of a WebUI that never saw ControlNet (a stale StyleAlign mode included);
    ControlNet's leftovers are put back as found."""
    model, module = webui
    controlnet = ControlNetStandIn()
    unet = unet_of(model)
    calls = []  # the rows of each call of one self-attention layer: a pass of the reference's own would add calls
    attn1 = next(m for name, m in unet.named_modules() if name.endswith("attn1"))
    counter = attn1.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        fresh = generate(module, controlnet, enabled(), [])
        calls[:] = []
        generate(module, controlnet, enabled(), [])  # a repeat: the chain from the cache, as in the requests below
        fresh_calls = list(calls)
        generate(module, controlnet, None, REFERENCE if mode == "reference" else [], style_align=mode == "style_align")
        assert leftovers(model) > 0 and "forward" in vars(unet)  # ControlNet's restore leaves the bound class forward
        for _ in range(2):  # not just the first request after it
            calls[:] = []
            after = generate(module, controlnet, enabled(), [])
            assert "off:" not in after.info and np.array_equal(pixels(after), pixels(fresh))
            assert calls == fresh_calls  # the reference rides in the same calls: no pass of its own
    finally:
        counter.remove()
    assert leftovers(model) > 0 and hook_count(model) == 0


def test_with_a_reference_unit_in_the_same_request_rival_is_off_for_that_request_only(webui):
    model, module = webui
    controlnet = ControlNetStandIn()
    controlnet_alone = generate(module, controlnet, None, REFERENCE)
    both = generate(module, controlnet, enabled(), REFERENCE)
    assert "off: ControlNet unit 0 (reference_only) rewrites the same self-attention" in both.info
    assert np.array_equal(pixels(both), pixels(controlnet_alone))
    fresh = generate(module, ControlNetStandIn(), enabled(), [])
    after = generate(module, controlnet, enabled(), CANNY)  # ControlNet's next request with units restores the blocks
    assert "off:" not in after.info and leftovers(model) == 0
    assert np.array_equal(pixels(after), pixels(fresh))
    assert hook_count(model) == 0


def test_with_style_align_in_the_same_request_rival_is_off_for_it(webui):
    _, module = webui
    result = generate(module, ControlNetStandIn(), enabled(), [], style_align=True)
    assert "off: ControlNet's [StyleAlign] rewrites the same self-attention" in result.info


@pytest.mark.parametrize("units", [[], CANNY])
def test_other_requests_are_not_refused(webui, units):
    """No reference unit, no refusal (ControlNet's other units in the same request are not RIVAL's concern here)."""
    _, module = webui
    result = generate(module, ControlNetStandIn(), enabled(), units)
    assert "RIVAL:" in result.info and "off:" not in result.info

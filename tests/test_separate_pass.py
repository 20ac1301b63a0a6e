"""When another extension replaces the UNet's forward (ControlNet does, sizing its control inputs by
the call's rows), the reference rows run in a pass of their own through the class forward and are
replayed into the unchanged call: same images, no call ever larger than the extension expects."""

from __future__ import annotations

import torch
from conftest import photo_latent, text

from rival_ext import KDenoiser, Reference, RivalParams, RivalUNet, SelfAttentionInjector, invert, sample_euler


def generate(unet, model, schedule, chain, reference, params):
    with SelfAttentionInjector(unet) as injector:
        rival = RivalUNet(model, injector, params, reference)
        start = torch.stack([chain.top, chain.top.flip(-1)])
        return sample_euler(rival, schedule, start, chain.sigmas, text(5, 2), text(6, 2), 7.0)


def test_an_instance_forward_gets_only_the_generated_rows_and_images_are_unchanged(unet64, model64, schedule):
    ref_cond, ref_uncond = text(1), text(2)
    chain = invert(photo_latent(), KDenoiser(model64, schedule, ref_cond), schedule.ddim_sigmas(8))
    reference = Reference(chain, ref_cond, ref_uncond)
    params = RivalParams(early_plain=960)
    in_call = generate(unet64, model64, schedule, chain, reference, params)

    seen, first_block = [], unet64.input_blocks[0]
    class_forward = unet64.forward  # bound to the class's forward

    def controlnet_like(x, *args, **kwargs):
        seen.append(x.shape[0])
        return class_forward(x, *args, **kwargs)

    unet64.forward = controlnet_like
    block_rows = []
    handle = first_block.register_forward_pre_hook(lambda _m, args: block_rows.append(args[0].shape[0]))
    try:
        separate = generate(unet64, model64, schedule, chain, reference, params)
    finally:
        handle.remove()
        del unet64.forward
    torch.testing.assert_close(separate, in_call, rtol=1e-10, atol=1e-10)
    assert set(seen) == {4}  # the extension's forward only ever sees the 2 images x (cond, uncond)
    assert 2 in block_rows and 6 not in block_rows  # reference rows ran in passes of their own
    assert "forward" not in vars(unet64)

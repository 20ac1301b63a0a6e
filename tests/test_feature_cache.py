"""The optional reference-feature cache: replaying recorded reference rows is exact and bounded."""

from __future__ import annotations

import torch
from conftest import photo_latent, text

from rival_ext import KDenoiser, Reference, RivalParams, RivalUNet, SelfAttentionInjector, invert, sample_euler
from rival_ext.feature_cache import FeatureCache


def generate(unet, model, schedule, chain, reference, features, rows_seen):
    first_block = unet.input_blocks[0]  # sees the call as the UNet runs it, reference rows included
    handle = first_block.register_forward_pre_hook(lambda _m, args: rows_seen.append(args[0].shape[0]))
    try:
        with SelfAttentionInjector(unet) as injector:
            rival = RivalUNet(model, injector, RivalParams(early_plain=960), reference, features)
            start = torch.stack([chain.top, chain.top.flip(-1)])
            return sample_euler(rival, schedule, start, chain.sigmas, text(5, 2), text(6, 2), 7.0)
    finally:
        handle.remove()


def test_replayed_features_give_the_same_images_with_plain_sized_calls(unet64, model64, schedule):
    ref_cond, ref_uncond = text(1), text(2)
    sigmas = schedule.ddim_sigmas(10)
    chain = invert(photo_latent(), KDenoiser(model64, schedule, ref_cond), sigmas)
    reference = Reference(chain, ref_cond, ref_uncond)
    without, rows_without = generate(unet64, model64, schedule, chain, reference, None, rows := []), rows
    cache = FeatureCache(max_bytes=2**30, device_bytes=2**30)
    recorded, rows_recorded = generate(unet64, model64, schedule, chain, reference, cache, rows := []), rows
    replayed, rows_replayed = generate(unet64, model64, schedule, chain, reference, cache, rows := []), rows
    torch.testing.assert_close(recorded, without, rtol=0, atol=0)
    torch.testing.assert_close(replayed, without, rtol=1e-10, atol=1e-10)
    assert rows_recorded == rows_without and max(rows_without) == 2 * 2 + 2
    assert rows_replayed == [4] * 10  # every call as large as a plain one: 2 images x (cond, uncond)
    assert len(cache) == 2 * 10


def test_a_full_cache_stops_recording_and_stays_exact(unet64, model64, schedule):
    ref = text(1)
    sigmas = schedule.ddim_sigmas(6)
    chain = invert(photo_latent(), KDenoiser(model64, schedule, ref), sigmas)
    reference = Reference(chain, ref, ref)
    without = generate(unet64, model64, schedule, chain, reference, None, [])
    full = FeatureCache(max_bytes=2**30)
    generate(unet64, model64, schedule, chain, reference, full, [])
    small = FeatureCache(max_bytes=full.nbytes // 2, device_bytes=0)
    generate(unet64, model64, schedule, chain, reference, small, [])
    assert 0 < small.nbytes <= small.max_bytes and len(small) < 6
    replayed = generate(unet64, model64, schedule, chain, reference, small, rows := [])
    torch.testing.assert_close(replayed, without, rtol=1e-10, atol=1e-10)
    assert 4 in rows and 5 in rows  # some evaluations replayed (plain size), the rest carried the shared row

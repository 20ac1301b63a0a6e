"""SDXL-style conditioning (a pooled ``y`` vector per row) and v-prediction through the row hook.

sgm is not on PyPI; ldm's UNetModel with a ``label_emb`` over a ``y`` vector has the input SDXL's
UNet has (pooled text + size ids through ``label_emb``), so the routing of the reference rows' own
``y`` is checked on it.
"""

from __future__ import annotations

import torch
from conftest import CONTEXT_DIM, photo_latent, text

from rival_ext import (
    Conditioning,
    DiscreteSchedule,
    KDenoiser,
    Reference,
    RivalParams,
    RivalUNet,
    SelfAttentionInjector,
    UNetEps,
    invert,
)
from rival_ext.conditioning import Role

ADM = 12


def sdxl_like_unet(seed: int = 5):
    import ldm.modules.attention
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    ldm.modules.attention._ATTN_PRECISION = "model"
    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
        attention_resolutions=[1, 2], channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True,
        transformer_depth=1, context_dim=CONTEXT_DIM, legacy=False, num_classes="continuous",
    )
    # SDXL's label_emb maps the 2816-d pooled text + size ids; this ldm version only has the hook point.
    unet.label_emb = torch.nn.Sequential(torch.nn.Linear(ADM, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5))
    return unet.eval()


def with_y(cond: Conditioning, seed: int) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(cond.context, torch.randn(len(cond), ADM, generator=g))


def setup(parameterization: str = "eps"):
    schedule = DiscreteSchedule.stable_diffusion()
    unet = sdxl_like_unet()
    model = UNetEps(unet, schedule, parameterization)
    ref_cond = with_y(text(1, dtype=torch.float32), 1)
    ref_uncond = with_y(text(2, dtype=torch.float32), 2)
    sigmas = schedule.ddim_sigmas(8)
    chain = invert(photo_latent(dtype=torch.float32), KDenoiser(model, schedule, ref_cond), sigmas)
    return schedule, unet, model, Reference(chain, ref_cond, ref_uncond)


def test_reference_rows_carry_their_own_pooled_vector():
    """Invariant 7 with SDXL-style conditioning: reference rows' eps equal a plain call on them alone."""
    schedule, unet, model, reference = setup()
    sigma = float(schedule.sigmas[701])
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    cond = Conditioning.cat([with_y(text(7, dtype=torch.float32), 7), with_y(text(8, dtype=torch.float32), 8)])
    with SelfAttentionInjector(unet) as injector:
        rival = RivalUNet(model, injector, RivalParams(), reference)
        _, eps_ref = rival(z, sigma, 701.0, cond, [Role.COND, Role.UNCOND])
    z_ref = reference.chain.reference_vp(sigma).unsqueeze(0).float()
    alone = model(z_ref, torch.tensor([701.0]), reference.cond)
    torch.testing.assert_close(eps_ref, alone, rtol=1e-4, atol=1e-5)
    wrong_y = model(z_ref, torch.tensor([701.0]), Conditioning(reference.cond.context, reference.uncond.y))
    assert not torch.allclose(eps_ref, wrong_y, atol=1e-4)


def test_generated_rows_keep_their_pooled_vectors_whatever_the_batch():
    """Invariant 10 with y: a generated row's eps is the same alone or with another image."""
    schedule, unet, model, reference = setup()
    sigma = float(schedule.sigmas[501])
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 4, 16, 16, generator=g)
    conds = [with_y(text(10 + i, dtype=torch.float32), 10 + i) for i in range(2)]
    with SelfAttentionInjector(unet) as injector:
        rival = RivalUNet(model, injector, RivalParams(), reference)
        both, _ = rival(z, sigma, 501.0, Conditioning.cat(conds), [Role.COND, Role.COND])
        second, _ = rival(z[1:], sigma, 501.0, conds[1], [Role.COND])
    torch.testing.assert_close(both[1:], second, rtol=1e-4, atol=1e-5)


def test_v_prediction_reference_eps_is_the_eps_equivalent():
    """Invariant 19 for the row hook: a v model's reference output is converted to eps like the rows'."""
    schedule, unet, model, reference = setup("v")
    sigma = float(schedule.sigmas[301])
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    with SelfAttentionInjector(unet) as injector:
        rival = RivalUNet(model, injector, RivalParams(), reference)
        _, eps_ref = rival(z, sigma, 301.0, with_y(text(9, dtype=torch.float32), 9), [Role.COND])
    z_ref = reference.chain.reference_vp(sigma).unsqueeze(0).float()
    expected = model(z_ref, torch.tensor([301.0]), reference.cond)  # UNetEps converts v to eps
    torch.testing.assert_close(eps_ref, expected, rtol=1e-4, atol=1e-5)
    # and that eps-equivalent is (x - D) / sigma of the k-diffusion v denoiser
    x_ref = reference.chain.reference_at(sigma).unsqueeze(0).float()
    denoised = KDenoiser(model, schedule, reference.cond)(x_ref, torch.tensor([sigma]))
    torch.testing.assert_close(eps_ref, (x_ref - denoised) / sigma, rtol=1e-3, atol=1e-4)


def test_y_arrives_among_keyword_extras_as_under_a1111s_patched_forward():
    """A1111 replaces the UNet class forward by forward(self, x, timesteps, context, *args, **kwargs);
    SDXL's y then travels in **kwargs and must still get the reference rows' pooled vectors."""
    schedule, unet, model, reference = setup()
    sigma = float(schedule.sigmas[701])
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    cond = Conditioning.cat([with_y(text(7, dtype=torch.float32), 7), with_y(text(8, dtype=torch.float32), 8)])
    with SelfAttentionInjector(unet) as injector:
        expected, eps_ref = RivalUNet(model, injector, RivalParams(), reference)(
            z, sigma, 701.0, cond, [Role.COND, Role.UNCOND])

    original = type(unet)

    class A1111Patched(original):
        def forward(self, x, timesteps=None, context=None, *args, **kwargs):
            return original.forward(self, x, timesteps, context, *args, **kwargs)

    unet.__class__ = A1111Patched
    try:
        with SelfAttentionInjector(unet) as injector:
            got, got_ref = RivalUNet(model, injector, RivalParams(), reference)(
                z, sigma, 701.0, cond, [Role.COND, Role.UNCOND])
    finally:
        unet.__class__ = original
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_ref, eps_ref, rtol=1e-5, atol=1e-6)

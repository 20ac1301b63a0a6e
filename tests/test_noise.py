"""The named VE/VP/eps/v conversions of rival_ext.noise agree with their textbook formulas."""

from __future__ import annotations

import math

import pytest
import torch

from rival_ext.noise import (
    abar_of_sigma,
    ddim_step,
    eps_from_v,
    ve_noise_for,
    ve_rescale,
    ve_std,
    ve_to_vp,
    vp_noise_for,
    vp_scale,
    vp_to_ve,
)


def _latent(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_abar_is_the_vp_signal_level_of_sigma() -> None:
    for sigma in (0.0, 0.03, 1.0, 14.6):
        assert math.isclose(float(abar_of_sigma(sigma)), 1 / (1 + sigma**2), rel_tol=1e-15)


def test_per_row_sigmas_scale_each_row() -> None:
    x, sigmas = _latent(), torch.tensor([0.5, 3.0], dtype=torch.float64)
    z = ve_to_vp(x, sigmas)
    for row, sigma in enumerate(sigmas.tolist()):
        torch.testing.assert_close(z[row], ve_to_vp(x[row], sigma), rtol=1e-15, atol=0)
    torch.testing.assert_close(vp_to_ve(z, sigmas), x, rtol=1e-15, atol=0)


def test_v_to_eps_inverts_the_v_definition() -> None:
    x0, eps = _latent(1), _latent(2)
    for abar in (0.9, 0.3, 0.01):
        z = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps
        v = abar**0.5 * eps - (1 - abar) ** 0.5 * x0
        torch.testing.assert_close(eps_from_v(v, z, abar), eps, rtol=1e-12, atol=1e-12)
        as_tensor = eps_from_v(v, z, torch.tensor(abar, dtype=torch.float64))
        torch.testing.assert_close(as_tensor, eps, rtol=1e-12, atol=1e-12)


def test_rescale_and_start_noise() -> None:
    x, x0 = _latent(3), _latent(4)
    src, tgt = torch.tensor(2.0, dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64)
    torch.testing.assert_close(ve_rescale(x, src, tgt), vp_to_ve(ve_to_vp(x, src), tgt), rtol=1e-14, atol=0)
    abar, sigma = 0.4, 3.0
    noise = vp_noise_for(x, x0, abar)
    torch.testing.assert_close(abar**0.5 * x0 + (1 - abar) ** 0.5 * noise, x, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(x0 + sigma * ve_noise_for(x, x0, sigma), x, rtol=1e-14, atol=1e-14)


def test_ddim_step_is_a_ve_euler_step_and_ve_std_is_the_inverse_vp_scale() -> None:
    g = torch.Generator().manual_seed(7)
    z, eps = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(1, 4, 8, 8, generator=g,
                                                                                       dtype=torch.float64)
    s_a, s_b = 3.0, 0.5
    a, b = float(abar_of_sigma(s_a)), float(abar_of_sigma(s_b))
    torch.testing.assert_close(vp_to_ve(ddim_step(z, eps, a, b), s_b), vp_to_ve(z, s_a) + (s_b - s_a) * eps)
    assert ve_std(s_a) == pytest.approx(1 / float(vp_scale(s_a)), rel=1e-15)

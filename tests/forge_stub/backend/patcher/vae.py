"""Forge: backend/patcher/vae.py ``VAE``: pixels channels-last in [0, 1], the first stage's ``encode(x, regulation)``
with ``model_vae_regulation`` from its patcher's options (none: the posterior is *sampled*)."""

from __future__ import annotations

from backend.patcher.base import ModelPatcher


class VAE:
    def __init__(self, model):
        self.first_stage_model = model
        self.patcher = ModelPatcher(model, load_device="cpu", offload_device="cpu")
        self.latent_channels = 4

    # Forge: VAE.encode -> encode_inner: movedim(-1, 1), 2x - 1, first_stage_model.encode(pixels, regulation)
    def encode(self, pixel_samples):
        regulation = self.patcher.model_options.get("model_vae_regulation", None)
        pixels = pixel_samples.movedim(-1, 1)
        return self.first_stage_model.encode(2.0 * pixels - 1.0, regulation).float()

    # Forge: VAE.decode -> channels-last images in [0, 1]
    def decode(self, samples):
        return ((self.first_stage_model.decode(samples) + 1.0) / 2.0).clamp(0, 1).movedim(1, -1)

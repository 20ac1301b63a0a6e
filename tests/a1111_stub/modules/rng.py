"""``ImageRNG``: one torch.Generator per seed. The first ``next()`` is the initial noise, later calls feed
ancestral samplers (A1111 routes k-diffusion's ``randn_like`` here), so both stay reproducible per seed."""

import torch

from modules import devices


# A1111: modules/rng.py ImageRNG (per-seed generators; subseeds and seed resize left out)
class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.generators = [torch.Generator(devices.cpu).manual_seed(int(seed)) for seed in seeds]
        self.is_first = True

    def first(self) -> torch.Tensor:
        return self.next()

    def next(self) -> torch.Tensor:
        self.is_first = False
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(devices.device)

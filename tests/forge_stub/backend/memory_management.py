"""Forge: backend/memory_management.py, as far as an extension calls it (everything stays on the CPU here).

``loads`` counts ``load_model_gpu``/``load_models_gpu`` calls (tests check RIVAL loads the UNet through it).
"""

from __future__ import annotations

import torch

signal_empty_cache = False
loads: list[object] = []


# Forge: backend/memory_management.py get_torch_device
def get_torch_device() -> torch.device:
    return torch.device("cpu")


# Forge: backend/memory_management.py load_models_gpu, load_model_gpu(model) = load_models_gpu([model])
def load_models_gpu(models, memory_required=0, hard_memory_preservation=0) -> None:
    loads.extend(models)


def load_model_gpu(model) -> None:
    load_models_gpu([model])


# Forge: backend/memory_management.py soft_empty_cache
def soft_empty_cache(force=False) -> None:
    global signal_empty_cache
    signal_empty_cache = False


# Forge: backend/memory_management.py get_free_memory (the CPU: plenty)
def get_free_memory(dev=None, torch_free_too=False):
    return 2**40

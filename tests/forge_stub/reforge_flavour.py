"""The ComfyUI-style patcher of reForge and Forge Classic over the Forge stub (``RIVAL_STUB=reforge``).

What differs for an extension, as read in Panchovix/stable-diffusion-webui-reForge main (3b56b268): the
patcher's model is ldm_patched's ``BaseModel`` (``model_sampling``, no ``predictor``, no
``computation_dtype``: ``forge_model`` builds ``ComfyModel``); ``_calc_cond_batch`` puts no
``cond_indices``/``uncond_indices``/``cond_mark`` in the transformer options; memory management is
``ldm_patched.modules.model_management.load_models_gpu``; the VAE encodes the posterior's mode.
``modules/sd_samplers_cfg_denoiser.py`` ``CFGDenoiser.forward`` builds ``CFGDenoiserParams(x, ...)`` and then calls
``sampling_function(model, x, ...)`` with its own ``x``: a callback that assigns ``params.x`` does not reach the
model (only an in-place change does); the inpainting mask blends the noised init latent in before the callback only
with ``mask_before_denoising`` (default False), else the denoised after the model. Importing this
module (before the model is built) registers ``ldm_patched.modules.model_management``.
"""

from __future__ import annotations

import sys
import types

from backend import memory_management
from modules import sd_samplers_cfg_denoiser

model_management = types.ModuleType("ldm_patched.modules.model_management")
model_management.load_models_gpu = memory_management.load_models_gpu
model_management.soft_empty_cache = memory_management.soft_empty_cache
ldm_patched = types.ModuleType("ldm_patched")
ldm_patched.modules = types.ModuleType("ldm_patched.modules")
ldm_patched.modules.model_management = model_management
sys.modules.update({"ldm_patched": ldm_patched, "ldm_patched.modules": ldm_patched.modules,
                    "ldm_patched.modules.model_management": model_management})

sd_samplers_cfg_denoiser.CFGDenoiser.patcher_family = True

"""Forge: backend/patcher/base.py ``ModelPatcher``: the model options an extension patches, cloned per pass.

Relied on: ``model_options`` starts as ``{"transformer_options": {}}``; ``clone()`` deep-copies it (so a patch
function on a clone is deep-copied, and a bound method would copy its object); ``set_model_patch`` appends to
``transformer_options["patches"][name]`` in place; ``set_model_patch_replace`` copies the dicts on the way down;
the wrapper and post-CFG setters write ``model_options`` keys. LoRA loading and weight patching are left out.
"""

from __future__ import annotations

import copy

import torch


# Forge: backend/patcher/base.py set_model_options_patch_replace
def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    to = model_options["transformer_options"].copy()
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"][name] = dict(to["patches_replace"].get(name, {}))
    block = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
    to["patches_replace"][name][block] = patch
    model_options["transformer_options"] = to
    return model_options


# Forge: backend/patcher/base.py set_model_options_post_cfg_function
def set_model_options_post_cfg_function(model_options, post_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_post_cfg_function"] = [*model_options.get("sampler_post_cfg_function", []),
                                                  post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, current_device=None, **kwargs):
        self.size = size
        self.model = model
        self.lora_patches = {}
        self.object_patches = {}
        self.model_options = {"transformer_options": {}}
        self.load_device = load_device
        self.offload_device = offload_device
        self.current_device = offload_device if current_device is None else current_device

    # Forge: ModelPatcher.clone: model_options deep-copied
    def clone(self):
        n = ModelPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def model_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # Forge: ModelPatcher.set_model_sampler_post_cfg_function
    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_post_cfg_function(self.model_options, post_cfg_function,
                                                                 disable_cfg1_optimization)

    # Forge: ModelPatcher.set_model_unet_function_wrapper: model_options["model_function_wrapper"] (one slot)
    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_vae_regulation(self, vae_regulation):
        self.model_options["model_vae_regulation"] = vae_regulation

    # Forge: ModelPatcher.set_model_patch: appended to the list in transformer_options["patches"][name]
    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"]
        if "patches" not in to:
            to["patches"] = {}
        to["patches"][name] = [*to["patches"].get(name, []), patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                             transformer_index=transformer_index)

    def set_model_attn1_patch(self, patch):
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch):
        self.set_model_patch(patch, "attn1_output_patch")

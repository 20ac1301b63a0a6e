"""Forge: backend/sampling/sampling_function.py: one CFG evaluation through the UNet patcher.

Relied on (Forge main): ``sampling_function`` compiles the conds (each AND sub-prompt position a cond entry of B
rows), attaches ControlNet, runs the ``conditioning_modifiers`` (which may run the model themselves, through
``sampling_function_inner``), then ``sampling_function_inner``; that drops the uncond when cond_scale is 1 (unless
``disable_cfg1_optimization``), runs ``calc_cond_uncond_batch``, CFG, then every ``sampler_post_cfg_function``.
``calc_cond_uncond_batch`` pops the entries in *reverse* (uncond first), batches entries that can concatenate
into one model call with ``cond_or_uncond`` (0 cond, 1 uncond) per chunk, a *copy* of the patcher's
``transformer_options`` with ``cond_or_uncond``, ``sigmas`` (the evaluation's sigma per chunk row), ``cond_mark``,
``cond_indices``/``uncond_indices``, computes ControlNet's residuals for the call's rows, and calls
``model_function_wrapper(model.apply_model, {input, timestep, c, cond_or_uncond})`` or ``model.apply_model``.
Area conds and the free-memory batch split are left out (every concatenable entry goes in one call, unless the
test sets ``max_chunks`` to split calls as Forge does when memory is short).
"""

from __future__ import annotations

import collections
import math

import torch

from backend import memory_management
from backend.sampling.condition import compile_conditions, compile_weighted_conditions

COND, UNCOND = 0, 1
max_chunks = 0  # tests: at most this many entries per model call (0: no limit), Forge's low-memory split


# Forge: get_area_and_mult without areas and masks: input_x = x_in, mult = strength (an AND sub-prompt's weight)
def get_area_and_mult(conds, x_in, timestep_in):
    conditioning = {c: conds["model_conds"][c].process_cond(batch_size=x_in.shape[0], device=x_in.device)
                    for c in conds["model_conds"]}
    cond_obj = collections.namedtuple('cond_obj', ['input_x', 'mult', 'conditioning', 'control', 'patches'])
    return cond_obj(x_in, torch.ones_like(x_in) * conds.get('strength', 1.0), conditioning,
                    conds.get('control', None), None)


def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape or (c1.control is None) != (c2.control is None):
        return False
    if c1.control is not None and c1.control is not c2.control:
        return False
    if c1.conditioning.keys() != c2.conditioning.keys():
        return False
    return all(c1.conditioning[k].can_concat(c2.conditioning[k]) for k in c1.conditioning)


def cond_cat(c_list):
    temp = {}
    for x in c_list:
        for k in x:
            temp.setdefault(k, []).append(x[k])
    return {k: conds[0].concat(conds[1:]) for k, conds in temp.items()}


# Forge: compute_cond_mark / compute_cond_indices (rows of each chunk = rows of the sigma tensor)
def compute_cond_mark(cond_or_uncond, sigmas):
    size = int(sigmas.shape[0])
    return torch.Tensor([cx for cx in cond_or_uncond for _ in range(size)]).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):
    size = int(sigmas.shape[0])
    cond_indices, uncond_indices = [], []
    for i, cx in enumerate(cond_or_uncond):
        (cond_indices if cx == COND else uncond_indices).extend(range(i * size, (i + 1) * size))
    return cond_indices, uncond_indices


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    out_cond, out_count = torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37
    out_uncond, out_uncond_count = torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37
    to_run = [(get_area_and_mult(x, x_in, timestep), COND) for x in cond]
    if uncond is not None:
        to_run += [(get_area_and_mult(x, x_in, timestep), UNCOND) for x in uncond]
    while to_run:
        first = to_run[0]
        to_batch = [x for x in range(len(to_run)) if can_concat_cond(to_run[x][0], first[0])]
        to_batch.reverse()
        if max_chunks:
            to_batch = to_batch[:max_chunks]
        input_x, mult, c, cond_or_uncond, control = [], [], [], [], None
        for x in to_batch:
            p, role = to_run.pop(x)
            input_x.append(p.input_x)
            mult.append(p.mult)
            c.append(p.conditioning)
            cond_or_uncond.append(role)
            control = p.control
        batch_chunks = len(cond_or_uncond)
        input_x = torch.cat(input_x)
        c = cond_cat(c)
        timestep_ = torch.cat([timestep] * batch_chunks)
        transformer_options = model_options.get('transformer_options', {}).copy()
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        if not getattr(model, "patcher_family", False):  # reForge / Forge Classic give neither
            transformer_options["cond_mark"] = compute_cond_mark(cond_or_uncond, timestep)
            transformer_options["cond_indices"], transformer_options["uncond_indices"] = compute_cond_indices(
                cond_or_uncond, timestep)
        c['transformer_options'] = transformer_options
        if control is not None:
            c['control'] = control.get_control(input_x, timestep_, c.copy(), len(cond_or_uncond))
            c['control_model'] = control
        if 'model_function_wrapper' in model_options:
            output = model_options['model_function_wrapper'](model.apply_model, {
                "input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond})
        else:
            output = model.apply_model(input_x, timestep_, **c)
        for o, chunk, m in zip(cond_or_uncond, output.chunk(batch_chunks), mult):
            if o == COND:
                out_cond += chunk * m
                out_count += m
            else:
                out_uncond += chunk * m
                out_uncond_count += m
    return out_cond / out_count, out_uncond / out_uncond_count


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options={},  # noqa: B006 (Forge's)
                            seed=None,
                            return_full=False):
    edit_strength = sum(item.get('strength', 1) for item in cond)
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)
    if not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        cfg_result = fn({"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model,
                         "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                         "model_options": model_options, "input": x})
    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    control = unet_patcher.controlnet_linked_list
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]
    if control is not None:
        for h in cond + (uncond or []):
            h['control'] = control
    for modifier in model_options.get('conditioning_modifiers', []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed,
                                   return_full=True)


# Forge: sampling_prepare: the UNet (and ControlNets) loaded through memory management before sampling
def sampling_prepare(unet, x):
    memory_management.load_models_gpu([unet])


def sampling_cleanup(unet):
    pass

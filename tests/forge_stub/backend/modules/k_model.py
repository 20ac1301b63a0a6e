"""Forge: backend/modules/k_model.py ``KModel.apply_model``: the denoiser an extension's wrapper receives.

x (VE) and one sigma per row in; ``xc = predictor.calculate_input(sigma, x)`` in the computation dtype, the
timestep ``predictor.timestep(sigma)`` (nearest integer), ``diffusion_model(xc, t, context=c_crossattn,
control=, transformer_options=, **extra_conds)`` (SDXL's ``y`` among the extras), x0 out in float32.
"""

from __future__ import annotations

import torch


def predictor_of(model):
    """The schedule object of a patcher's model: Forge2's ``predictor``, ComfyUI's ``model_sampling`` (reForge)."""
    return getattr(model, "predictor", None) or model.model_sampling


class KModel(torch.nn.Module):
    def __init__(self, model, predictor, computation_dtype=torch.float32):
        super().__init__()
        self.diffusion_model = model
        self.predictor = predictor
        self.storage_dtype = self.computation_dtype = computation_dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},  # noqa: B006 (Forge's)
                    **kwargs):
        sigma = t
        predictor = predictor_of(self)
        xc = predictor.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        dtype = self.dtype_of_computation()
        xc = xc.to(dtype)
        t = predictor.timestep(t).float()
        context = c_crossattn.to(dtype)
        extra_conds = {}
        for key, extra in kwargs.items():
            if hasattr(extra, "dtype") and extra.dtype not in (torch.int, torch.long):
                extra = extra.to(dtype)
            extra_conds[key] = extra
        model_output = self.diffusion_model(xc, t, context=context, control=control,
                                            transformer_options=transformer_options, **extra_conds).float()
        return predictor.calculate_denoised(sigma, model_output, x)

    def dtype_of_computation(self):
        return self.computation_dtype

    def memory_required(self, input_shape):
        return 0


class ComfyModel(KModel):
    """reForge / Forge Classic: ldm_patched/modules/model_base.py ``BaseModel``: the same ``apply_model``, its
    schedule as ``model_sampling`` (no ``predictor``), ``model_type`` EPS, no ``computation_dtype``."""

    patcher_family = True  # ldm_patched/modules/samplers.py _calc_cond_batch gives no cond_indices/cond_mark

    def __init__(self, model, predictor, dtype=torch.float32):
        super().__init__(model, predictor, dtype)
        self.model_sampling = self.predictor
        del self.predictor
        self._dtype = dtype
        del self.computation_dtype, self.storage_dtype
        self.model_type = type("ModelType", (), {"name": "EPS"})()

    def dtype_of_computation(self):
        return self._dtype

"""Forge: modules/sd_samplers_common.py: A1111's, with a ``Sampler`` that does not read ``sd_model.model``
(Forge's models have none; ``conditioning_key`` is always 'crossattn')."""

from __future__ import annotations

from modules import a1111_module

_a1111 = a1111_module("sd_samplers_common")
globals().update({name: value for name, value in vars(_a1111).items() if not name.startswith("__")})


class Sampler(_a1111.Sampler):
    # Forge: modules/sd_samplers_common.py Sampler.__init__ (conditioning_key = 'crossattn')
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.stop_at = None
        self.eta = None
        self.config = None
        self.last_latent = None
        self.s_min_uncond = None
        self.eta_option_field = 'eta_ancestral'
        self.eta_infotext_field = 'Eta'
        self.eta_default = 1.0
        self.conditioning_key = 'crossattn'
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

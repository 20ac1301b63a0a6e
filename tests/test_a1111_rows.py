"""The reference rows among the UNet calls of a real A1111 generation (stub): calls of other extensions, split
calls, and the memory held by the separate reference pass (ControlNet present).

``rival_ext.reference_rows.RowRouter`` follows each model evaluation's row layout with a cursor: the calls that
cover the layout get the reference rows they need, a call past it belongs to someone else.
"""

from __future__ import annotations

import numpy as np
import torch
from harness import enabled, hook_count, pixels, txt2img
from modules import errors, script_callbacks, shared

from rival_ext.feature_cache import evaluation_key
from rival_ext.reference_rows import SeparatePass
from rival_ext.webui import extension


class ForeignCalls:
    """A stand-in for another extension that calls the UNet itself while RIVAL's evaluation is open.

    At ``cfg_denoiser`` (after RIVAL's callback: the evaluation is open, none of its rows has run) it calls
    the model on more rows than the evaluation has; at ``cfg_denoised`` (the evaluation's calls are done, it is
    closed only after CFG) on one row. Both are past the evaluation's row layout. Every call is kept with its
    output, to be redone on the plain UNet afterwards.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[object, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.layouts: list[int] = []
        self._last = None
        script_callbacks.on_cfg_denoiser(self.at_cfg_denoiser)
        script_callbacks.on_cfg_denoised(self.at_cfg_denoised)

    def call(self, inner_model, params, rows: int) -> None:
        x = params.x[:1].repeat(rows, 1, 1, 1)
        sigma = params.sigma[:1].repeat(rows)
        cond = params.text_cond[:1].repeat(rows, 1, 1)
        out = inner_model(x, sigma, cond={"c_crossattn": [cond]})
        self.calls.append((inner_model, x, sigma, cond, out.clone()))

    # A1111: modules/sd_samplers_cfg_denoiser.py CFGDenoiser.forward passes itself as CFGDenoiserParams.denoiser
    # (its inner_model is the k-diffusion wrapper of the model) and self.inner_model to CFGDenoisedParams
    def at_cfg_denoiser(self, params) -> None:
        self._last = params
        self.layouts.append(params.x.shape[0])
        self.call(params.denoiser.inner_model, params, params.x.shape[0] + 1)

    def at_cfg_denoised(self, params) -> None:
        self.call(params.inner_model, self._last, 1)

    def close(self) -> None:
        script_callbacks.remove_callbacks_for_function(self.at_cfg_denoiser)
        script_callbacks.remove_callbacks_for_function(self.at_cfg_denoised)


def test_another_extensions_unet_call_past_the_layout_is_left_alone(webui):
    """Its output is the plain UNet's, RIVAL's rows still reach their own calls, and the images are the same."""
    model, module = webui
    _, alone = txt2img(module, enabled(), batch_size=2)
    foreign = ForeignCalls()
    try:
        _, beside = txt2img(module, enabled(), batch_size=2)
    finally:
        foreign.close()
    assert not errors.exception_records and hook_count(model) == 0
    assert len(foreign.calls) == 2 * 6 and set(foreign.layouts) == {4}  # 6 steps; 2 images x (cond, uncond)
    for inner_model, x, sigma, cond, out in foreign.calls:  # the same call again, RIVAL's hooks gone
        assert torch.equal(inner_model(x, sigma, cond={"c_crossattn": [cond]}), out)
    for i in range(2):
        assert np.array_equal(pixels(alone, i), pixels(beside, i))


class RowsPerEvaluation:
    """The rows of each UNet call (seen by the UNet's first block), grouped by model evaluation."""

    def __init__(self, model) -> None:
        self.evaluations: list[tuple[float, list[int]]] = []
        self._open = False
        first_block = model.model.diffusion_model.input_blocks[0]
        self._handle = first_block.register_forward_pre_hook(self.record)
        script_callbacks.on_cfg_denoiser(self.begin)
        script_callbacks.on_cfg_after_cfg(self.end)

    def begin(self, params) -> None:
        self.evaluations.append((float(params.sigma[0]), []))
        self._open = True

    def record(self, _module, args) -> None:
        if self._open:
            self.evaluations[-1][1].append(args[0].shape[0])

    def end(self, _params) -> None:
        self._open = False

    def close(self) -> None:
        self._handle.remove()
        script_callbacks.remove_callbacks_for_function(self.begin)
        script_callbacks.remove_callbacks_for_function(self.end)


def test_split_calls_carry_the_adain_target_row_once_per_evaluation(webui):
    """batch_cond_uncond off, two images: the cond call carries the reference-cond row (also the AdaIN
    target), the uncond call only the reference-uncond row, at every step, AdaIN steps included."""
    model, module = webui
    shared.opts.batch_cond_uncond = False
    rows = RowsPerEvaluation(model)
    try:
        txt2img(module, enabled(reference_prompt="prompt", t_early=600), batch_size=2)
    finally:
        rows.close()
    adain = [sigma for sigma, _ in rows.evaluations if _t(model, sigma) > 600]
    assert 0 < len(adain) < len(rows.evaluations) == 6
    assert [calls for _, calls in rows.evaluations] == [[2 + 1, 2 + 1]] * 6
    assert not errors.exception_records


def _t(model, sigma: float) -> float:
    from rival_ext.a1111.model import schedule_of

    return float(schedule_of(model).sigma_to_t(torch.tensor(sigma)))


class HeldFeatures:
    """What the reference strategy's cache holds during each model evaluation (its UNet calls done, at
    ``cfg_denoised``) and after it (``cfg_after_cfg``): the evaluation whose rows each item is, and the bytes."""

    def __init__(self) -> None:
        self.during: list[tuple[tuple, set[tuple], int, int, bool]] = []  # key, items' keys, items, bytes, features
        self.after: list[tuple[tuple, set[tuple]]] = []
        self.strategies: set[type] = set()
        self._key = None
        self._router = None
        script_callbacks.on_cfg_denoiser(self.begin)
        script_callbacks.on_cfg_denoised(self.measure)
        script_callbacks.on_cfg_after_cfg(self.end)

    def begin(self, params) -> None:  # after RIVAL's: the evaluation is open
        self._router = extension.job_of(params.denoiser.p).alignment.rows
        ev = self._router.evaluation
        self._key = evaluation_key(ev.sigma, ev.t)

    def _cache(self):
        self.strategies.add(type(self._router.apart))
        return self._router.apart.cache

    def measure(self, _params) -> None:
        cache = self._cache()
        features = all(item.features is not None for item in cache._items.values())
        self.during.append((self._key, {item[:2] for item in cache._items}, len(cache), cache.nbytes, features))

    def end(self, _params) -> None:
        self.after.append((self._key, {item[:2] for item in self._cache()._items}))

    def close(self) -> None:
        for callback in (self.begin, self.measure, self.end):
            script_callbacks.remove_callbacks_for_function(callback)


def test_the_separate_pass_holds_one_evaluations_reference_features_at_most(webui):
    """With ControlNet's forward on the UNet the reference rows run apart and their features are replayed: during
    each evaluation only its own rows are held (one per reference role), after it at most those, never the earlier
    evaluations' (kept, they added up to gigabytes over a generation)."""
    model, module = webui
    unet = model.model.diffusion_model
    class_forward = unet.forward
    unet.forward = lambda x, *args, **kwargs: class_forward(x, *args, **kwargs)  # an instance forward, as ControlNet's
    held = HeldFeatures()
    try:
        txt2img(module, enabled(reference_prompt="prompt"), steps=8)
    finally:
        held.close()
        del unet.forward
    assert held.strategies == {SeparatePass} and len(held.during) == len(held.after) == 8
    for key, keys, items, _, features in held.during:
        assert keys == {key}, "features of an earlier evaluation are still held"
        assert items == 2 and features  # the reference-cond and reference-uncond rows, with their features
    assert len({nbytes for *_, nbytes, _ in held.during}) == 1  # the same bytes in every evaluation
    assert all(keys <= {key} for key, keys in held.after)
    assert not errors.exception_records

"""RIVAL through the patch API of Forge's UNet patcher (Forge2 ``backend``, and the ComfyUI-style patcher of
reForge and Forge Classic), on the per-sampling clone of ``forge_objects.unet``.

* A ``model_function_wrapper`` carries the reference rows into the model call: it gets the denoiser's
  call (``apply_model(input, timestep, **c)``: VE latents, one sigma per row, x0 out) with the roles of
  its chunks (``cond_or_uncond``), puts the reference rows in front and takes them back off. A wrapper
  set before RIVAL's is kept inside it. Only the calls of the open evaluation are RIVAL's: a pass of
  another extension on other latents (the reference preprocessors' recording pass) is left alone.
* An ``attn1_patch`` (before the projections, a list that composes) rewrites each self-attention layer's
  keys and values by the plan: another extension's attn1 *replace* patch then gets RIVAL's keys and
  values and both act. With a foreign patch that reads rows by position, the reference rows run in a
  pass of their own (``apply_model`` with RIVAL's patch only) and are replayed into the unchanged call.
  A blended plan (strengths, several references, masks) keeps the layer's inputs and moves its output in
  an ``attn1_output_patch`` (``attention.blended_output``, the extra attentions through the layer's attn1).
* AdaIN after guidance stays in the WebUI's ``on_cfg_after_cfg`` (the job's), ControlNet's residuals
  reach the generated rows only (the reference rows get zeros, as in the official ControlNet pipeline).

Forge clones the patcher for every pass and deep-copies its options: every patch here is a callable
whose deep copy is itself, so nothing of RIVAL outlives the pass's clone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..attention import (
    AttentionPlan,
    blended_output,
    block_key,
    find_self_attention,
    injected_context,
    planned_context,
)
from ..chain import InversionChain
from ..conditioning import Conditioning, Role
from ..host import AlignmentSpec
from ..reference_rows import Evaluation, RowRouter
from ..session import Alignment, check_reached
from .objects import UnetPatcher

ApplyModel = Callable[..., Tensor]  # the denoiser's apply_model(input, timestep, **c)
WrapperArgs = dict[str, Any]  # a model function wrapper's call: input, timestep, c, cond_or_uncond
OWN_KEYS = {"c_crossattn", "y", "transformer_options", "control", "control_model"}  # c keys RIVAL extends
FOREIGN_ROW_OPTIONS = ("patches_replace", "block_modifiers", "block_inner_modifiers", "group_norm_wrapper")


class Patch:
    """A patch function whose deep copy is itself (Forge deep-copies model options on every clone)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __deepcopy__(self, memo: dict[int, object]) -> Patch:
        return self


class DenoiserCall:
    """One call of Forge's denoiser through ``model_function_wrapper``: ``input`` (VE rows), ``timestep``
    (one sigma per row), ``c`` (``c_crossattn``, SDXL's ``y``, ControlNet's ``control``, the
    ``transformer_options``), ``cond_or_uncond`` (the role of each equal chunk of rows: 0 cond, 1 uncond)."""

    def __init__(self, apply_model: ApplyModel, args: WrapperArgs, run: Callable[[WrapperArgs], Tensor],
                 own_patches: dict[str, list[Patch]], apart: bool | None = None) -> None:
        self.apply_model = apply_model
        self.x: Tensor = args["input"]
        self.sigma: Tensor = args["timestep"]
        self.c: dict[str, Any] = dict(args["c"])
        self.chunks: list[int] = list(args["cond_or_uncond"])
        self._run = run
        self.own_patches = own_patches
        self.changed = False
        self.apart = self.foreign_rows() if apart is None else apart

    def arguments(self) -> WrapperArgs:
        return {"input": self.x, "timestep": self.sigma, "c": self.c, "cond_or_uncond": self.chunks}

    @property
    def rows(self) -> int:
        return self.x.shape[0]

    @property
    def roles(self) -> list[Role]:
        per_chunk = self.rows // max(len(self.chunks), 1)
        return [Role.COND if chunk == 0 else Role.UNCOND for chunk in self.chunks for _ in range(per_chunk)]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def foreign_rows(self) -> bool:
        """Whether another extension reads this call's rows by position or sizes inputs by them: its attn1
        replace, block modifiers, other per-layer patches, or model inputs RIVAL cannot extend."""
        options = self.c.get("transformer_options") or {}
        if any(options.get(key) for key in FOREIGN_ROW_OPTIONS):
            return True
        patches = options.get("patches") or {}
        if any(patch not in self.own_patches.get(name, ()) for name, listed in patches.items() for patch in listed):
            return True
        control = self.c.get("control")
        if control is not None and not _paddable(control, self.rows):
            return True
        return any(isinstance(v, Tensor) and v.dim() and v.shape[0] == self.rows
                   for k, v in self.c.items() if k not in OWN_KEYS)

    def reference_latent(self, chain: InversionChain, sigma: float, count: int) -> Tensor:
        x = chain.reference_at(sigma).to(self.x.device, self.x.dtype)
        return x.unsqueeze(0).expand(count, *x.shape)

    def as_eps(self, output: Tensor, latent: Tensor, sigma: float) -> Tensor:
        return ((latent.to(output) - output) / sigma).detach()

    def put_reference_rows(self, latents: Tensor, texts: Sequence[Conditioning], keep_own: bool) -> None:
        count = len(latents)
        own = Conditioning(self.c["c_crossattn"], self.c.get("y"))
        texts = [text.like(own) for text in texts]
        joined = Conditioning.cat([*texts, own] if keep_own else texts)
        reference_sigma = self.sigma[:1].expand(count)
        self.x = torch.cat([latents, self.x]) if keep_own else latents
        self.sigma = torch.cat([reference_sigma, self.sigma]) if keep_own else reference_sigma
        self.c["c_crossattn"] = joined.context
        if joined.y is not None:
            self.c["y"] = joined.y
        control = self.c.get("control")
        if control is not None:
            self.c["control"] = _padded(control, count)
        self.changed = True

    def alone(self) -> DenoiserCall:
        """The reference rows' own call: their texts, RIVAL's patch only, no ControlNet residuals."""
        c = {"c_crossattn": self.c["c_crossattn"], "transformer_options": {"patches": dict(self.own_patches)}}
        if self.c.get("y") is not None:
            c["y"] = self.c["y"]
        args = {"input": self.x, "timestep": self.sigma, "c": c, "cond_or_uncond": self.chunks}
        return DenoiserCall(self.apply_model, args, self._run, self.own_patches, apart=True)

    def run(self) -> Tensor:
        """The model's own denoiser (no other extension's wrapper, only RIVAL's patch)."""
        return self.apply_model(self.x, self.sigma, **self.c)

    def run_wrapped(self) -> Tensor:
        """Through the wrapper RIVAL's replaced (if any), as the call was going to run."""
        return self._run(self.arguments())


class ForgeAlignment(Alignment):
    """RIVAL's patches on Forge's per-sampling UNet clone, for one pass.

    ``current`` returns the patcher the sampler will use (``sd_model.forge_objects.unet``): when another
    extension cloned RIVAL's clone and replaced the model function wrapper, the next evaluation puts
    RIVAL's back around it. ``restore`` (optional) is called once when the alignment is removed.
    """

    def __init__(self, current: Callable[[], UnetPatcher], spec: AlignmentSpec,
                 restore: Callable[[], None] | None = None) -> None:
        self.current = current
        self.restore = restore
        diffusion_model: nn.Module = current().model.diffusion_model
        layers = find_self_attention(diffusion_model)
        if not layers:
            raise ValueError("the UNet has no self-attention layers (attn1) that RIVAL can align")
        self.layer_of = {block_key(layer.name): index for index, layer in enumerate(layers)}
        self.modules = [layer.module for layer in layers]
        router = RowRouter(len(layers), spec.params, spec.references, spec.features, spec.where, spec.selected)
        super().__init__(router, spec.params)
        self.applied = 0
        self.closed = False
        self.attn1 = Patch(self._attn1)
        self.attn1_output = Patch(self._attn1_output)
        self.wrapper = Patch(self._wrapper)
        self.inner: Callable[[ApplyModel, WrapperArgs], Tensor] | None = None  # a wrapper there before RIVAL's
        self._blend: tuple[int, Tensor, Tensor, Tensor] | None = None  # the blended layer's inputs

    @property
    def own_patches(self) -> dict[str, list[Patch]]:
        return {"attn1_patch": [self.attn1], "attn1_output_patch": [self.attn1_output]}

    def install(self) -> ForgeAlignment:
        """RIVAL's attn1 patch and model function wrapper on the current patcher (a clone of Forge's)."""
        self.ensure_installed()
        return self

    def ensure_installed(self) -> None:
        """Put RIVAL's patches on the current patcher where another extension's clone lost or replaced them."""
        patcher = self.current()
        options = patcher.model_options
        patches = options.get("transformer_options", {}).get("patches", {})
        if self.attn1 not in patches.get("attn1_patch", []):
            patcher.set_model_attn1_patch(self.attn1)
        if self.attn1_output not in patches.get("attn1_output_patch", []):
            patcher.set_model_attn1_output_patch(self.attn1_output)
        wrapper = options.get("model_function_wrapper")
        if wrapper is not self.wrapper:
            self.inner = wrapper
            patcher.set_model_unet_function_wrapper(self.wrapper)

    def remove(self) -> None:
        """RIVAL's patches turn inert, and the patcher RIVAL cloned is put back where its clone still is."""
        self.closed = True
        if self.restore is not None:
            self.restore()
            self.restore = None
        super().remove()

    close = remove

    def begin(self, sigma: float, t: float, roles: Sequence[Role], x: Tensor | None = None) -> Evaluation:
        self.ensure_installed()
        return super().begin(sigma, t, roles, x)

    # -- the model function wrapper ---------------------------------------------------------------

    def _run(self, apply_model: ApplyModel, args: WrapperArgs) -> Tensor:
        if self.inner is not None:
            return self.inner(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def _wrapper(self, apply_model: ApplyModel, args: WrapperArgs) -> Tensor:
        call = DenoiserCall(apply_model, args, lambda a: self._run(apply_model, a), self.own_patches)
        if self.closed or not self.owns(call):
            return call.run_wrapped()
        plan = self.rows.before(call, self.planned)
        self._plan(plan)
        self.applied = 0
        try:
            output = call.run_wrapped()
        finally:
            self._plan(None)
        check_reached(plan, self.applied, self.rows.layers)
        stripped = self.rows.after(output)
        return output if stripped is None else stripped

    def owns(self, call: DenoiserCall) -> bool:
        """Whether the call is the open evaluation's: each chunk of its rows is the sampler's latents."""
        ev = self.evaluation
        if ev is None or ev.x is None or call.rows % max(len(call.chunks), 1):
            return False
        return all(chunk.shape == ev.x.shape and torch.equal(chunk, ev.x.to(chunk))
                   for chunk in call.x.chunk(len(call.chunks)))

    # -- the attn1 patch --------------------------------------------------------------------------

    def _attn1(self, n: Tensor, context: Tensor, value: Tensor,
               extra_options: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        plan: AttentionPlan | None = self.plan
        if plan is None or self.closed:
            return n, context, value
        self.applied += 1
        block = extra_options.get("block")
        key = (block[0], int(block[1]), int(extra_options.get("block_index", 0))) if block else None
        layer = None if key is None else self.layer_of.get(key)
        if layer is None:
            raise RuntimeError(f"RIVAL: an unknown self-attention layer {key} reached RIVAL's patch")
        injected = planned_context(context, plan, layer)
        if plan.terms and plan.acts_on(layer):
            self._blend = (layer, n, context, value)
        if injected is None:
            return n, context, value
        if value is context:
            return n, injected, injected
        return n, injected, injected_context(value, plan, layer)  # as planned_context's, which injected


    def _attn1_output(self, out: Tensor, extra_options: dict[str, Any]) -> Tensor:
        """A blended layer's output moved towards each reference (its inputs kept by ``_attn1``)."""
        blend, self._blend = self._blend, None
        plan = self.plan
        if blend is None or plan is None or self.closed:
            return out
        layer, hidden, context, value = blend
        module = self.modules[layer]

        def attend(x: Tensor, keys: Tensor, values: Tensor) -> Tensor:
            attended: Tensor = module(x, context=keys, value=values)
            return attended

        return blended_output(out, hidden, context, value, plan, layer, attend)


def _paddable(control: object, rows: int) -> bool:
    """ControlNet's residuals ({'input'|'middle'|'output': [tensor or None]}) with one row per call row."""
    if not isinstance(control, dict):
        return False
    return all(t is None or (isinstance(t, Tensor) and t.shape[0] == rows)
               for listed in control.values() for t in (listed or []))


def _padded(control: dict[str, list[Tensor | None]], count: int) -> dict[str, list[Tensor | None]]:
    """ControlNet's residuals with zero rows in front for the reference rows (no control for them)."""
    return {key: [None if t is None else torch.cat([t.new_zeros((count, *t.shape[1:])), t]) for t in listed]
            for key, listed in control.items()}


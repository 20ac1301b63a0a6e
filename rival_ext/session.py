"""One generation's evaluation protocol: evaluations, the attention plan, AdaIN after guidance.

An ``Alignment`` is what a pass of a RIVAL generation installs on a model: each model evaluation of
the sampler is opened by ``begin(sigma, t, roles)`` and closed by ``after_guidance``, which applies
AdaIN to the guided prediction (eps for timestep samplers, denoised x0 for k-diffusion ones) while
t > t_early. Between the two, every model call goes through the row router (``reference_rows``),
which returns the attention plan of that call; the alignment is the only writer of the plan.

How the plan and the rows reach the model is the mechanism's: ``RivalSession`` (here) puts module
hooks on a torch UNet (A1111, and the library's own samplers), ``rival_ext.forge`` puts patches on
Forge's per-sampling UNet clone. Both are driven the same way by the job.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .adain import adain, adain_denoised
from .attention import Args, AttentionPlan, Kwargs, SelfAttentionInjector
from .conditioning import Role
from .feature_cache import FeatureCache
from .hooks import HookHandles
from .params import AttentionMode, RivalParams
from .reference_rows import Evaluation, Reference, RowRouter, UNetCall
from .request import RivalRuntimeError


class Alignment:
    """The open evaluation and the attention plan of one pass; ``install``/``remove`` are the mechanism's."""

    def __init__(self, router: RowRouter, params: RivalParams) -> None:
        self.rows = router
        self.params = params
        self.plan: AttentionPlan | None = None

    def install(self) -> Alignment:
        """Put the mechanism on the model (all or none)."""
        return self

    def remove(self) -> None:
        """Take it off (idempotent) and forget the evaluation."""
        if self.rows.reset():  # a call raised between before and after: drop the plan it set
            self._plan(None)

    close = remove

    def __enter__(self) -> Alignment:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- the attention plan (its only writer) -----------------------------------------------------

    def _plan(self, plan: AttentionPlan | None) -> None:
        self.plan = plan

    @contextmanager
    def planned(self, plan: AttentionPlan | None) -> Iterator[None]:
        """``plan`` for the model calls inside the block (the reference pass), then none."""
        self._plan(plan)
        try:
            yield
        finally:
            self._plan(None)

    # -- evaluations ------------------------------------------------------------------------------

    @property
    def evaluation(self) -> Evaluation | None:
        """The open evaluation, if any."""
        return self.rows.evaluation

    def begin(self, sigma: float, t: float, roles: Sequence[Role], x: Tensor | None = None) -> Evaluation:
        """Open a model evaluation at (sigma, t) whose rows, over all its calls, have ``roles``; ``x``: the
        latents the sampler hands the model, one row per image (a host may tell its calls apart by them)."""
        return self.rows.begin(sigma, t, roles, x)

    def end(self) -> Evaluation | None:
        """Close the evaluation: later calls are not RIVAL's. Returns the closed one."""
        return self.rows.end()

    def after_guidance(self, guided: Tensor, x: Tensor | None = None) -> Tensor:
        """Close the evaluation; AdaIN of the guided prediction to the reference-cond row's while t > t_early.

        ``guided`` is eps, or with ``x`` (the rows' model input) a denoised x0 (k-diffusion).
        """
        evaluation = self.end()
        if evaluation is not None and evaluation.calls == 0:
            raise RivalRuntimeError(
                "RIVAL: no model call of this step reached RIVAL; another extension bypassed it (a replaced model "
                "function or UNet forward); turn that extension off or RIVAL off")
        if evaluation is None or not self.params.adain_active(evaluation.t):
            return guided
        target = self.rows.adain_target(evaluation)
        if target is None:
            return guided
        if x is None:
            return target(guided) if callable(target) else adain(guided, target)
        sigma = torch.full((x.shape[0],), evaluation.sigma, device=x.device, dtype=x.dtype)
        return adain_denoised(guided, x, sigma, target)


class RivalSession(Alignment):
    """Module hooks on one torch UNet: the self-attention injector and the UNet's pre/post hooks.

    ``injector``: an injector whose hooks someone else installed (the session then installs only
    the row hooks and leaves the injector's alone); by default the session makes and owns one.
    ``separate``: the reference rows run in a pass of their own (default: while another extension
    replaces the UNet's forward on the instance, as ControlNet does, sizing its inputs by the call).
    A planned call that reaches fewer self-attention layers than the UNet has was bypassed by
    another extension: it stops the generation with a message instead of a silently plain image.
    """

    def __init__(
        self,
        unet: nn.Module,
        params: RivalParams,
        references: Reference | Sequence[Reference],
        parameterization: str = "eps",
        features: FeatureCache | None = None,
        separate: bool | None = None,
        injector: SelfAttentionInjector | None = None,
        where: Tensor | None = None,
        selected: frozenset[int] | None = None,
    ) -> None:
        self.unet = unet
        self.parameterization = parameterization
        self._owns_injector = injector is None
        self.injector = SelfAttentionInjector(unet) if injector is None else injector
        self.separate = separate
        router = RowRouter(len(self.injector.layers), params, references, features, where, selected)
        super().__init__(router, params)
        self._handles = HookHandles("row")

    def install(self) -> RivalSession:
        """Put every hook on the UNet (all or none)."""
        self._handles.begin()
        try:
            if self._owns_injector:
                self.injector.__enter__()
            self._handles.add(self.unet.register_forward_pre_hook(self._before, with_kwargs=True))
            self._handles.add(self.unet.register_forward_hook(self._after))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook (idempotent) and forget the evaluation."""
        self._handles.remove()
        super().remove()
        if self._owns_injector:
            self.injector.remove()

    close = remove

    @property
    def installed(self) -> bool:
        """Whether the row hooks are on the UNet now."""
        return bool(self._handles)

    @property
    def reference(self) -> Reference:
        return self.rows.reference

    def _plan(self, plan: AttentionPlan | None) -> None:
        self.plan = self.injector.plan = plan

    @property
    def apart(self) -> bool:
        """Whether the reference rows run in a pass of their own now."""
        return replaced_forward(self.unet) if self.separate is None else self.separate

    def _before(self, module: nn.Module, args: Args, kwargs: Kwargs) -> tuple[Args, Kwargs] | None:
        self._plan(None)
        call = UNetCall(self.unet, args, kwargs, self.parameterization, self.apart)
        self._plan(self.rows.before(call, self.planned))
        self.injector.applied = 0
        return call.args() if call.changed else None

    def _after(self, module: nn.Module, args: Args, output: Tensor) -> Tensor | None:
        plan, self.plan = self.plan, None
        self._plan(None)
        check_reached(plan, self.injector.applied, len(self.injector.layers))
        return self.rows.after(output)


def replaced_forward(unet: nn.Module) -> bool:
    """Whether another extension replaced the UNet's forward on the instance. sd-webui-controlnet puts back
    ``model.forward = model._original_forward`` after its request: the class's own forward, bound, stays on the
    instance for good, and is not a replacement."""
    forward = vars(unet).get("forward")
    if forward is None:
        return False
    own = getattr(forward, "__func__", None) is type(unet).forward and getattr(forward, "__self__", None) is unet
    return not own


def check_reached(plan: AttentionPlan | None, applied: int, layers: int) -> None:
    """A planned call must reach every self-attention layer; else another extension bypassed RIVAL there."""
    if plan is not None and plan.mode is not AttentionMode.PLAIN and applied < layers:
        raise RivalRuntimeError(
            f"RIVAL: another extension bypassed RIVAL's self-attention injection in {layers - applied} of {layers} "
            "layers (a replaced attention or transformer block); turn that extension off or RIVAL off")

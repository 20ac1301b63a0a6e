"""One generation's evaluation protocol: hooks in and out together, evaluations, AdaIN after guidance.

A ``RivalSession`` installs every RIVAL hook on a UNet at once (the self-attention injector and the
UNet's pre/post hooks that carry the reference rows) and removes them together, also on error.
Each model evaluation of the sampler is opened by ``begin(sigma, t, roles)`` and closed by
``after_guidance``, which applies AdaIN to the guided prediction (eps for timestep samplers,
denoised x0 for k-diffusion ones) while t > t_early. The session is the only writer of the
attention plan: the row router (``reference_rows``) returns the plan for each call and the
session sets it for that call. Both the library's samplers (``sampling``) and the A1111 job drive it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .adain import adain, adain_denoised
from .attention import AttentionPlan, SelfAttentionInjector
from .conditioning import Role
from .feature_cache import FeatureCache
from .hooks import HookHandles
from .params import RivalParams
from .reference_rows import Evaluation, Reference, RowRouter


class RivalSession:
    """The hooks and the open evaluation of one generation on one UNet.

    ``injector``: an injector whose hooks someone else installed (the session then installs only
    the row hooks and leaves the injector's alone); by default the session makes and owns one.
    """

    def __init__(
        self,
        unet: nn.Module,
        params: RivalParams,
        reference: Reference,
        parameterization: str = "eps",
        features: FeatureCache | None = None,
        separate: bool | None = None,
        injector: SelfAttentionInjector | None = None,
    ) -> None:
        self.unet = unet
        self.params = params
        self.reference = reference
        self._owns_injector = injector is None
        self.injector = SelfAttentionInjector(unet) if injector is None else injector
        self.rows = RowRouter(unet, len(self.injector.layers), params, reference, parameterization, features, separate)
        self._handles = HookHandles("row")

    # -- hooks ------------------------------------------------------------------------------------

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
        if self.rows.reset():  # a call raised between the two hooks: drop the plan it set
            self._plan(None)
        if self._owns_injector:
            self.injector.remove()

    close = remove

    @property
    def installed(self) -> bool:
        """Whether the row hooks are on the UNet now."""
        return bool(self._handles)

    def __enter__(self) -> RivalSession:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- the attention plan (its only writer) -----------------------------------------------------

    def _plan(self, plan: AttentionPlan | None) -> None:
        self.injector.plan = plan

    @contextmanager
    def planned(self, plan: AttentionPlan | None) -> Iterator[None]:
        """``plan`` for the UNet calls inside the block (the reference pass), then none."""
        self._plan(plan)
        try:
            yield
        finally:
            self._plan(None)

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._plan(None)
        call, plan = self.rows.before(args, kwargs, self.planned)
        self._plan(plan)
        return call

    def _after(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        self._plan(None)
        return self.rows.after(output)

    # -- evaluations ------------------------------------------------------------------------------

    @property
    def evaluation(self) -> Evaluation | None:
        """The open evaluation, if any."""
        return self.rows.evaluation

    def begin(self, sigma: float, t: float, roles: Sequence[Role]) -> Evaluation:
        """Open a model evaluation at (sigma, t) whose rows, over all its UNet calls, have ``roles``."""
        return self.rows.begin(sigma, t, roles)

    def end(self) -> Evaluation | None:
        """Close the evaluation: later calls are not RIVAL's. Returns the closed one."""
        return self.rows.end()

    def after_guidance(self, guided: Tensor, x: Tensor | None = None) -> Tensor:
        """Close the evaluation; AdaIN of the guided prediction to the reference-cond row's while t > t_early.

        ``guided`` is eps, or with ``x`` (the rows' model input) a denoised x0 (k-diffusion).
        """
        evaluation = self.end()
        if evaluation is None or not self.params.adain_active(evaluation.t) or evaluation.eps_ref is None:
            return guided
        if x is None:
            return adain(guided, evaluation.eps_ref)
        sigma = torch.full((x.shape[0],), evaluation.sigma, device=x.device, dtype=x.dtype)
        return adain_denoised(guided, x, sigma, evaluation.eps_ref)

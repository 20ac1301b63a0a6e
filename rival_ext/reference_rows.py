"""The reference rows ride in the same UNet call as the generated rows.

A forward pre-hook on the UNet puts the reference row(s) for the current evaluation in front of
the call's rows (latent from the chain at the evaluation's sigma, the call's own timestep, the
reference texts) and plans the self-attention injection; a forward hook takes their outputs back
off, keeping the reference-cond row's eps as the AdaIN target. Callers see a UNet that behaves as
before for their rows. Which rows of a call are cond or uncond comes from a cursor over the
evaluation's row layout, so any split of the rows into calls (A1111's batch_cond_uncond off,
unequal prompt lengths, skipped uncond) routes correctly; rows past the layout belong to a foreign
call and are left alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .attention import AttentionPlan, SelfAttentionInjector
from .chain import InversionChain
from .conditioning import Conditioning, ReferenceRows, Role, reference_rows
from .feature_cache import FeatureCache, evaluation_key
from .hooks import HookHandles
from .noise import abar_of_sigma, eps_from_v
from .params import AttentionMode, RivalParams

ARG_NAMES = {"x": ("x", "sample"), "t": ("timesteps", "timestep", "t"), "context": ("context",), "y": ("y",)}


@dataclass(frozen=True)
class Reference:
    """The reference branch: its chain and the texts of its cond and uncond rows (one row each)."""

    chain: InversionChain
    cond: Conditioning
    uncond: Conditioning

    @property
    def shared(self) -> bool:
        """One reference row serves both roles when the two texts are the same (null prompt)."""
        a, b = self.cond, self.uncond
        if a is b:
            return True
        if (a.y is None) != (b.y is None) or (a.y is not None and not torch.equal(a.y, b.y)):
            return False
        return a.context.shape == b.context.shape and torch.equal(a.context, b.context)


@dataclass
class Evaluation:
    """One model evaluation of the sampler: its noise level and the roles of its rows, in order."""

    sigma: float
    t: float
    roles: list[Role]
    cursor: int = 0
    eps_ref: Tensor | None = None  # reference-cond eps once a call has computed it


class ReferenceRowsHook:
    """Installs the row hooks on a UNet for a ``with`` block (removed on exit, also on error)."""

    def __init__(
        self,
        unet: nn.Module,
        injector: SelfAttentionInjector,
        params: RivalParams,
        reference: Reference,
        parameterization: str = "eps",
        features: FeatureCache | None = None,
        separate: bool | None = None,
    ) -> None:
        self.unet = unet
        self.injector = injector
        self.params = params
        self.reference = reference
        self.parameterization = parameterization
        self.shared = reference.shared
        self.features = features
        # Another extension's instance-level forward (ControlNet's) sizes its own inputs by the call's
        # rows: then the reference rows run in a pass of their own through the class forward (no
        # control residuals, as the official ControlNet pipeline) and are replayed into the call.
        self.separate = "forward" in vars(unet) if separate is None else separate
        self._pass_features: FeatureCache | None = None
        self.evaluation: Evaluation | None = None
        self._signature = inspect.signature(type(unet).forward.__get__(unet))  # not an extension's wrapper
        self._pending: ReferenceRows | None = None
        self._record: list[Tensor | None] | None = None
        self._handles = HookHandles("row")

    def __enter__(self) -> ReferenceRowsHook:
        self._handles.begin()
        self._handles.add(self.unet.register_forward_pre_hook(self._before, with_kwargs=True))
        self._handles.add(self.unet.register_forward_hook(self._after))
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hooks (idempotent) and forget the evaluation."""
        self._handles.remove()
        self._pass_features = None
        if self._pending is not None:  # a call raised between the two hooks: drop the plan it set
            self.injector.plan = None
        self.evaluation = None
        self._pending = None

    def begin(self, sigma: float, t: float, roles: Sequence[Role]) -> Evaluation:
        """Start a model evaluation at (sigma, t) whose rows, over all its UNet calls, have ``roles``."""
        self.evaluation = Evaluation(float(sigma), float(t), [Role(r) for r in roles])
        if self.separate and self.features is None:  # only this evaluation's rows: nothing accumulates
            self._pass_features = FeatureCache(max_bytes=2**62, device_bytes=2**62)
        return self.evaluation

    def end(self) -> None:
        """Close the evaluation (after CFG): later calls are not RIVAL's."""
        self.evaluation = None

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        ev = self.evaluation
        self._pending = None
        self.injector.plan = None
        if ev is None:
            return None
        call = CallArguments(self._signature, args, kwargs)
        x = call.get("x")
        n = x.shape[0]
        if ev.cursor + n > len(ev.roles):  # a call of someone else's: leave it alone
            return None
        roles = ev.roles[ev.cursor : ev.cursor + n]
        ev.cursor += n
        mode = self.params.attention_mode(ev.t)
        need_target = self.params.adain_active(ev.t) and ev.eps_ref is None
        rows = reference_rows(roles if mode is not AttentionMode.PLAIN else [], self.shared, need_target)
        if rows.count == 0:
            return None
        if self.separate:
            self._reference_pass(mode, call)
        if self._replay(rows, mode, need_target, x.device):
            return None
        self._put_reference_rows(call, rows.roles, keep_own=True)
        self._pending = rows
        if mode is not AttentionMode.PLAIN:
            self._record = [None] * len(self.injector.layers) if self._cache is not None else None
            self.injector.plan = AttentionPlan(mode, rows.sources, record=self._record, record_rows=rows.count)
        return call.args()

    def _put_reference_rows(self, call: CallArguments, roles: tuple[Role, ...], keep_own: bool) -> None:
        """Reference rows (latent, the call's timestep, their texts) in front of the call's rows, or alone."""
        x = call.get("x")
        z = self._reference_latent(len(roles), x)
        t = torch.as_tensor(call.get("t"), device=x.device).reshape(-1)
        own = Conditioning(call.get("context"), call.get("y"))
        texts = [_like(self.reference.cond if r is Role.COND else self.reference.uncond, own) for r in roles]
        joined = Conditioning.cat([*texts, own] if keep_own else texts)
        call.set("x", torch.cat([z, x]) if keep_own else z)
        reference_t = t[:1].expand(len(roles))
        call.set("t", torch.cat([reference_t, t.expand(x.shape[0])]) if keep_own else reference_t)
        call.set("context", joined.context)
        if joined.y is not None:
            call.set("y", joined.y)

    def _replay(self, rows: ReferenceRows, mode: AttentionMode, need_target: bool, device: torch.device) -> bool:
        """Serve the reference rows from the feature cache, if it holds them; the call keeps its size."""
        ev, cache = self.evaluation, self._cache
        if cache is None:
            return False
        key = evaluation_key(ev.sigma, ev.t)
        plain = mode is AttentionMode.PLAIN
        if not all(cache.has(key, role, need_features=not plain) for role in rows.roles):
            return False
        if need_target:
            ev.eps_ref = cache.eps(key, Role.COND)
        if not plain:
            banked = cache.banked(key, rows.roles, device)
            self.injector.plan = AttentionPlan(mode, rows.sources[rows.count :], banked=banked)
        return True

    def _after(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        rows, self._pending = self._pending, None
        record, self._record = self._record, None
        self.injector.plan = None
        if rows is None:
            return None
        ev = self.evaluation
        index = rows.index(Role.COND)
        if ev is not None and index is not None and ev.eps_ref is None:
            ev.eps_ref = self._as_eps(output[index : index + 1], ev)
        if ev is not None and self._cache is not None:
            self._store(rows.roles, record, output, ev)
        return output[rows.count :]

    @property
    def _cache(self) -> FeatureCache | None:
        return self.features if self.features is not None else self._pass_features

    def _store(self, roles: tuple[Role, ...], record: list | None, output: Tensor, ev: Evaluation) -> None:
        key = evaluation_key(ev.sigma, ev.t)
        complete = record is not None and all(r is not None for r in record)
        for i, role in enumerate(roles):
            features = [r[i : i + 1].clone() for r in record] if complete else None
            self._cache.put(key, role, features, self._as_eps(output[i : i + 1], ev))

    def _reference_pass(self, mode: AttentionMode, call: CallArguments) -> None:
        """Run the evaluation's missing reference rows through the UNet's class forward and record them."""
        ev, cache = self.evaluation, self._cache
        key, plain = evaluation_key(ev.sigma, ev.t), mode is AttentionMode.PLAIN
        wanted = reference_rows(ev.roles if not plain else [], self.shared, self.params.adain_active(ev.t))
        roles = tuple(r for r in wanted.roles if not cache.has(key, r, need_features=not plain))
        if not roles:
            return
        alone = CallArguments(self._signature, *call.args())
        self._put_reference_rows(alone, roles, keep_own=False)
        record: list[Tensor | None] = [None] * len(self.injector.layers)
        self.injector.plan = AttentionPlan(
            AttentionMode.PLAIN, torch.arange(len(roles)), record=None if plain else record, record_rows=len(roles)
        )
        try:
            args, kwargs = alone.args()
            output = type(self.unet).forward(self.unet, *args, **kwargs)
        finally:
            self.injector.plan = None
        self._store(roles, None if plain else record, output, ev)

    def _reference_latent(self, count: int, like: Tensor) -> Tensor:
        ev = self.evaluation
        z = self.reference.chain.reference_vp(ev.sigma).to(like.device, like.dtype)
        return z.unsqueeze(0).expand(count, *z.shape)

    def _as_eps(self, out: Tensor, ev: Evaluation) -> Tensor:
        if self.parameterization == "eps":
            return out.detach().clone()
        z = self.reference.chain.reference_vp(ev.sigma).to(out.device, out.dtype)
        return eps_from_v(out, z, float(abar_of_sigma(ev.sigma)))


class CallArguments:
    """A UNet call's arguments by role (x, t, context, y), wherever the forward's signature puts them.

    A1111 replaces the UNet class's forward by ``forward(self, x, timesteps, context, *args, **kwargs)``,
    so SDXL's ``y`` arrives among the keyword extras rather than as a named parameter.
    """

    def __init__(self, signature: inspect.Signature, args: tuple, kwargs: dict) -> None:
        self.bound = signature.bind(*args, **kwargs)
        self.extra = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)

    def _slot(self, role: str) -> tuple[dict, str] | None:
        values = self.bound.arguments
        extra = values.get(self.extra, {}) if self.extra else {}
        for name in ARG_NAMES[role]:
            if name in values:
                return values, name
            if name in extra:
                return extra, name
        return None

    def get(self, role: str) -> Any:
        slot = self._slot(role)
        return None if slot is None else slot[0][slot[1]]

    def set(self, role: str, value: Any) -> None:
        slot = self._slot(role)
        if slot is None:
            raise RuntimeError(f"RIVAL: the UNet call carries no {role} argument")
        slot[0][slot[1]] = value

    def args(self) -> tuple[tuple, dict]:
        return self.bound.args, dict(self.bound.kwargs)


def _like(text: Conditioning, own: Conditioning) -> Conditioning:
    """The reference text on the device and dtype of the call's own conditioning."""
    y = None if own.y is None or text.y is None else text.y.to(own.y.device, own.y.dtype)
    return Conditioning(text.context.to(own.context.device, own.context.dtype), y)

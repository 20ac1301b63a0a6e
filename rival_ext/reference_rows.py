"""The reference rows of each UNet call: added, routed by role, taken back off, recorded.

Before a UNet call (``RivalSession``'s pre-hook) the router puts the reference row(s) for the
current evaluation in front of the call's rows (latent from the chain at the evaluation's sigma,
the call's own timestep, the reference texts) and returns the self-attention plan; after it, it
takes their outputs back off, keeping the reference-cond row's eps as the AdaIN target. Callers
see a UNet that behaves as before for their rows. How the reference rows reach the attention is
one strategy chosen at install time: in the same call (``InCall``), replayed from recorded
features (``Replayed``, the feature cache), or a pass of their own through the class forward
(``SeparatePass``, when another extension replaced the UNet's forward). Which rows of a call are
cond or uncond comes from a cursor over the evaluation's row layout, so any split of the rows into
calls (A1111's batch_cond_uncond off, unequal prompt lengths, skipped uncond) routes correctly;
rows past the layout belong to a foreign call and are left alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .attention import AttentionPlan
from .chain import InversionChain
from .conditioning import Conditioning, ReferenceRows, Role, reference_rows
from .feature_cache import FeatureCache, evaluation_key
from .noise import abar_of_sigma, eps_from_v
from .params import AttentionMode, RivalParams

Planned = Callable[[AttentionPlan], AbstractContextManager[None]]  # the session's plan for a block
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


class RowRouter:
    """Routes one evaluation's UNet calls: adds, strips and records the reference rows a call needs.

    It installs nothing: ``RivalSession`` calls ``before``/``after`` from its UNet hooks and writes
    the attention plan ``before`` returns. How the reference rows reach the attention is a strategy
    (``InCall``, ``Replayed``, ``SeparatePass``) chosen once, here.
    """

    def __init__(
        self,
        unet: nn.Module,
        layers: int,
        params: RivalParams,
        reference: Reference,
        parameterization: str = "eps",
        features: FeatureCache | None = None,
        separate: bool | None = None,
    ) -> None:
        self.unet = unet
        self.layers = layers
        self.params = params
        self.reference = reference
        self.parameterization = parameterization
        self.shared = reference.shared
        self.signature = inspect.signature(type(unet).forward.__get__(unet))  # not an extension's wrapper
        # Another extension's instance-level forward (ControlNet's) sizes its own inputs by the call's
        # rows: then the reference rows run in a pass of their own through the class forward (no
        # control residuals, as the official ControlNet pipeline) and are replayed into the call.
        separate = "forward" in vars(unet) if separate is None else separate
        self.strategy: InCall = (
            SeparatePass(features) if separate else Replayed(features) if features is not None else InCall()
        )
        self.evaluation: Evaluation | None = None
        self.pending: Pending | None = None

    def begin(self, sigma: float, t: float, roles: Sequence[Role]) -> Evaluation:
        """Start a model evaluation at (sigma, t) whose rows, over all its UNet calls, have ``roles``."""
        self.evaluation = Evaluation(float(sigma), float(t), [Role(r) for r in roles])
        self.strategy.begin()
        return self.evaluation

    def end(self) -> Evaluation | None:
        """Close the evaluation (after CFG): later calls are not RIVAL's. Returns the closed one."""
        evaluation, self.evaluation = self.evaluation, None
        return evaluation

    def reset(self) -> bool:
        """Forget the evaluation and any call in flight; whether a call was in flight (its plan stands)."""
        in_flight = self.pending is not None
        self.strategy.reset()
        self.evaluation = None
        self.pending = None
        return in_flight

    def before(self, args: tuple, kwargs: dict, planned: Planned) -> Served:
        """The call's new arguments (None: unchanged) and the attention plan for it."""
        ev = self.evaluation
        self.pending = None
        if ev is None:
            return None, None
        call = CallArguments(self.signature, args, kwargs)
        n = call.get("x").shape[0]
        if ev.cursor + n > len(ev.roles):  # a call of someone else's: leave it alone
            return None, None
        roles = ev.roles[ev.cursor : ev.cursor + n]
        ev.cursor += n
        mode = self.params.attention_mode(ev.t)
        need_target = self.params.adain_active(ev.t) and ev.eps_ref is None
        rows = reference_rows(roles if mode is not AttentionMode.PLAIN else [], self.shared, need_target)
        if rows.count == 0:
            return None, None
        return self.strategy.serve(self, call, rows, mode, need_target, planned)

    def after(self, output: Tensor) -> Tensor | None:
        """The call's output without the reference rows (None: unchanged); keeps the AdaIN target."""
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        rows, ev = pending.rows, self.evaluation
        index = rows.index(Role.COND)
        if ev is not None and index is not None and ev.eps_ref is None:
            ev.eps_ref = self.as_eps(output[index : index + 1], ev)
        if ev is not None and self.strategy.cache is not None:
            self.store(rows.roles, pending.record, output, ev)
        return output[rows.count :]

    def put_reference_rows(self, call: CallArguments, roles: tuple[Role, ...], keep_own: bool) -> None:
        """Reference rows (latent, the call's timestep, their texts) in front of the call's rows, or alone."""
        x = call.get("x")
        z = self.reference_latent(len(roles), x)
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

    def store(self, roles: tuple[Role, ...], record: list | None, output: Tensor, ev: Evaluation) -> None:
        """Put the reference rows' features (when all layers recorded) and eps in the strategy's cache."""
        key = evaluation_key(ev.sigma, ev.t)
        complete = record is not None and all(r is not None for r in record)
        for i, role in enumerate(roles):
            features = [r[i : i + 1].clone() for r in record] if complete else None
            self.strategy.cache.put(key, role, features, self.as_eps(output[i : i + 1], ev))

    def reference_latent(self, count: int, like: Tensor) -> Tensor:
        z = self.reference.chain.reference_vp(self.evaluation.sigma).to(like.device, like.dtype)
        return z.unsqueeze(0).expand(count, *z.shape)

    def as_eps(self, out: Tensor, ev: Evaluation) -> Tensor:
        if self.parameterization == "eps":
            return out.detach().clone()
        z = self.reference.chain.reference_vp(ev.sigma).to(out.device, out.dtype)
        return eps_from_v(out, z, float(abar_of_sigma(ev.sigma)))


@dataclass(frozen=True)
class Pending:
    """A call that carries reference rows, between the two hooks: its rows and the features it records."""

    rows: ReferenceRows
    record: list[Tensor | None] | None


Served = tuple[tuple[tuple, dict] | None, AttentionPlan | None]


class InCall:
    """The reference rows ride in the same call, in front of its rows, and come back off its output."""

    cache: FeatureCache | None = None

    def begin(self) -> None:
        """A new evaluation."""

    def reset(self) -> None:
        """The hooks are removed."""

    def serve(self, router: RowRouter, call: CallArguments, rows: ReferenceRows, mode: AttentionMode,
              need_target: bool, planned: Planned) -> Served:
        router.put_reference_rows(call, rows.roles, keep_own=True)
        record = None
        plan = None
        if mode is not AttentionMode.PLAIN:
            record = [None] * router.layers if self.cache is not None else None
            plan = AttentionPlan(mode, rows.sources, record=record, record_rows=rows.count)
        router.pending = Pending(rows, record)
        return call.args(), plan


class Replayed(InCall):
    """Recorded features: the first evaluation at a level records the reference rows in the call
    (as ``InCall``), later ones replay them from the feature cache and the call keeps its size."""

    def __init__(self, features: FeatureCache | None) -> None:
        self.cache = features

    def serve(self, router: RowRouter, call: CallArguments, rows: ReferenceRows, mode: AttentionMode,
              need_target: bool, planned: Planned) -> Served:
        ev, cache = router.evaluation, self.cache
        key = evaluation_key(ev.sigma, ev.t)
        plain = mode is AttentionMode.PLAIN
        if not all(cache.has(key, role, need_features=not plain) for role in rows.roles):
            return super().serve(router, call, rows, mode, need_target, planned)
        if need_target:
            ev.eps_ref = cache.eps(key, Role.COND)
        if plain:
            return None, None
        banked = cache.banked(key, rows.roles, call.get("x").device)
        return None, AttentionPlan(mode, rows.sources[rows.count :], banked=banked)


class SeparatePass(Replayed):
    """A pass of its own through the UNet's class forward records the evaluation's reference rows,
    which are then replayed into the unchanged call (another extension's forward sizes its inputs by
    the call's rows). Without a feature cache, one of this evaluation's rows only."""

    def __init__(self, features: FeatureCache | None) -> None:
        super().__init__(features)
        self.features = features

    def begin(self) -> None:
        if self.features is None:  # only this evaluation's rows: nothing accumulates
            self.cache = FeatureCache(max_bytes=2**62, device_bytes=2**62)

    def reset(self) -> None:
        self.cache = self.features

    def serve(self, router: RowRouter, call: CallArguments, rows: ReferenceRows, mode: AttentionMode,
              need_target: bool, planned: Planned) -> Served:
        self.reference_pass(router, call, mode, planned)
        return super().serve(router, call, rows, mode, need_target, planned)

    def reference_pass(self, router: RowRouter, call: CallArguments, mode: AttentionMode, planned: Planned) -> None:
        """Run the evaluation's missing reference rows through the UNet's class forward and record them."""
        ev, cache = router.evaluation, self.cache
        key, plain = evaluation_key(ev.sigma, ev.t), mode is AttentionMode.PLAIN
        wanted = reference_rows(ev.roles if not plain else [], router.shared, router.params.adain_active(ev.t))
        roles = tuple(r for r in wanted.roles if not cache.has(key, r, need_features=not plain))
        if not roles:
            return
        alone = CallArguments(router.signature, *call.args())
        router.put_reference_rows(alone, roles, keep_own=False)
        record: list[Tensor | None] = [None] * router.layers
        plan = AttentionPlan(
            AttentionMode.PLAIN, torch.arange(len(roles)), record=None if plain else record, record_rows=len(roles)
        )
        args, kwargs = alone.args()
        with planned(plan):
            output = type(router.unet).forward(router.unet, *args, **kwargs)
        router.store(roles, None if plain else record, output, ev)


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

"""The reference rows of each model call: added, routed by role, taken back off, recorded.

Before a model call the router puts the reference row(s) for the current evaluation in front of the
call's rows (latent from the chain at the evaluation's sigma, the call's own level, the reference
texts) and returns the self-attention plan; after it, it takes their outputs back off, keeping the
reference-cond row's eps as the AdaIN target. Callers see a model that behaves as before for their
rows. Where a call is made and what its arguments look like is the host's: ``ModelCall`` is that
seam (A1111's UNet call in ``UNetCall`` here, Forge's denoiser call in ``rival_ext.forge``).

How the reference rows reach the attention is a strategy: in the same call (``InCall``), replayed
from recorded features (``Replayed``, the feature cache), or a pass of their own (``SeparatePass``)
for a call whose host says another extension sizes its inputs by the call's rows (``ModelCall.apart``). Which rows
of a call are cond or uncond comes from the call itself where the host says (Forge's
``cond_or_uncond``), else from a cursor over the evaluation's row layout, so any split of the rows
into calls (A1111's batch_cond_uncond off, unequal prompt lengths, skipped uncond) routes correctly;
rows past the layout belong to a foreign call and are left alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

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
        if (a.y is None) != (b.y is None) or (a.y is not None and b.y is not None and not torch.equal(a.y, b.y)):
            return False
        return a.context.shape == b.context.shape and torch.equal(a.context, b.context)

    def text(self, role: Role) -> Conditioning:
        """The conditioning row of a reference row with this role."""
        return self.cond if role is Role.COND else self.uncond


@dataclass
class Evaluation:
    """One model evaluation of the sampler: its noise level and the roles of its rows, in order."""

    sigma: float
    t: float
    roles: list[Role]
    x: Tensor | None = None  # the rows the sampler hands the model, where the host tells calls apart by them
    cursor: int = 0
    calls: int = 0  # model calls routed so far (none at all: RIVAL's way into the model was bypassed)
    eps_ref: Tensor | None = None  # reference-cond eps once a call has computed it


class ModelCall(Protocol):
    """One call of the model over some rows, as a host makes it: the seam between router and host."""

    @property
    def rows(self) -> int:
        """Number of rows the call carries now."""

    @property
    def roles(self) -> Sequence[Role] | None:
        """The roles of the call's rows where the host tells them; None: from the evaluation's layout."""

    @property
    def changed(self) -> bool:
        """Whether reference rows were put into the call."""

    @property
    def apart(self) -> bool:
        """Whether the reference rows must run in a pass of their own (another extension sizes its
        inputs by the call's rows, or reads its rows by position)."""

    @property
    def device(self) -> torch.device:
        """Where the call's rows are."""

    def reference_latent(self, chain: InversionChain, sigma: float, count: int) -> Tensor:
        """``count`` copies of the reference's latent at sigma in the form this call takes."""

    def as_eps(self, output: Tensor, latent: Tensor, sigma: float) -> Tensor:
        """The eps of output rows computed for ``latent`` rows at sigma."""

    def put_reference_rows(self, latents: Tensor, texts: Sequence[Conditioning], keep_own: bool) -> None:
        """Reference rows (latents, the call's level, their texts) in front of the call's rows, or alone."""

    def alone(self) -> ModelCall:
        """A copy of the call to carry reference rows alone (``run`` makes it)."""

    def run(self) -> Tensor:
        """Run this call through the model's own path, without another extension's wrapper."""


class RowRouter:
    """Routes one evaluation's model calls: adds, strips and records the reference rows a call needs.

    It installs nothing: the session calls ``before``/``after`` around each model call and writes the
    attention plan ``before`` returns. How the reference rows reach the attention is a strategy:
    ``in_call`` (``InCall``, or ``Replayed`` with a feature cache), or ``apart`` (``SeparatePass``) for
    the calls that say so.
    """

    def __init__(
        self,
        layers: int,
        params: RivalParams,
        reference: Reference,
        features: FeatureCache | None = None,
    ) -> None:
        self.layers = layers
        self.params = params
        self.reference = reference
        self.shared = reference.shared
        self.in_call: InCall = Replayed(features) if features is not None else InCall()
        self.apart = SeparatePass(features)
        self.evaluation: Evaluation | None = None
        self.pending: Pending | None = None

    @property
    def strategies(self) -> tuple[InCall, SeparatePass]:
        return self.in_call, self.apart

    def begin(self, sigma: float, t: float, roles: Sequence[Role], x: Tensor | None = None) -> Evaluation:
        """Start a model evaluation at (sigma, t) whose rows, over all its calls, have ``roles``."""
        self.evaluation = Evaluation(float(sigma), float(t), [Role(r) for r in roles], x)
        for strategy in self.strategies:
            strategy.begin()
        return self.evaluation

    def end(self) -> Evaluation | None:
        """Close the evaluation (after CFG): later calls are not RIVAL's. Returns the closed one."""
        evaluation, self.evaluation = self.evaluation, None
        for strategy in self.strategies:
            strategy.end()
        return evaluation

    def reset(self) -> bool:
        """Forget the evaluation and any call in flight; whether a call was in flight (its plan stands)."""
        in_flight = self.pending is not None
        for strategy in self.strategies:
            strategy.reset()
        self.evaluation = None
        self.pending = None
        return in_flight

    def before(self, call: ModelCall, planned: Planned) -> AttentionPlan | None:
        """Put the reference rows the call needs into it (``call.changed``); the attention plan for it."""
        ev = self.evaluation
        self.pending = None
        if ev is None:
            return None
        roles = call.roles
        if roles is None:
            if ev.cursor + call.rows > len(ev.roles):  # a call of someone else's: leave it alone
                return None
            roles = ev.roles[ev.cursor : ev.cursor + call.rows]
            ev.cursor += call.rows
        ev.calls += 1
        mode = self.params.attention_mode(ev.t)
        need_target = self.params.adain_active(ev.t) and ev.eps_ref is None
        rows = reference_rows(roles if mode is not AttentionMode.PLAIN else [], self.shared, need_target)
        if rows.count == 0:
            return None
        strategy = self.apart if call.apart else self.in_call
        return strategy.serve(self, call, rows, mode, need_target, planned)

    def after(self, output: Tensor) -> Tensor | None:
        """The call's output without the reference rows (None: unchanged); keeps the AdaIN target."""
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        rows, ev = pending.rows, self.evaluation
        index = rows.index(Role.COND)
        if ev is not None and index is not None and ev.eps_ref is None:
            ev.eps_ref = pending.call.as_eps(output[index : index + 1], pending.latents[index : index + 1], ev.sigma)
        if ev is not None and pending.cache is not None:
            self.store(rows.roles, pending, output, ev)
        return output[rows.count :]

    def put_reference_rows(self, call: ModelCall, roles: tuple[Role, ...], keep_own: bool) -> Tensor:
        """The evaluation's reference rows of ``roles`` into ``call``; returns their latents."""
        latents = call.reference_latent(self.reference.chain, self.evaluation.sigma, len(roles))
        call.put_reference_rows(latents, [self.reference.text(r) for r in roles], keep_own)
        return latents

    def store(self, roles: tuple[Role, ...], pending: Pending, output: Tensor, ev: Evaluation) -> None:
        """Put the reference rows' features (when all layers recorded) and eps in the pending call's cache."""
        key = evaluation_key(ev.sigma, ev.t)
        record = pending.record
        complete = record is not None and all(r is not None for r in record)
        for i, role in enumerate(roles):
            features = [r[i : i + 1].clone() for r in record] if complete else None
            eps = pending.call.as_eps(output[i : i + 1], pending.latents[i : i + 1], ev.sigma)
            pending.cache.put(key, role, features, eps)


@dataclass(frozen=True)
class Pending:
    """A call that carries reference rows, between before and after: its rows, latents and recording,
    and the feature cache of the strategy that served it (None: nothing is kept)."""

    call: ModelCall
    rows: ReferenceRows
    latents: Tensor
    record: list[Tensor | None] | None
    cache: FeatureCache | None = None


class InCall:
    """The reference rows ride in the same call, in front of its rows, and come back off its output."""

    cache: FeatureCache | None = None

    def begin(self) -> None:
        """A new evaluation."""

    def end(self) -> None:
        """The evaluation is closed."""

    def reset(self) -> None:
        """The hooks are removed."""

    def serve(self, router: RowRouter, call: ModelCall, rows: ReferenceRows, mode: AttentionMode,
              need_target: bool, planned: Planned) -> AttentionPlan | None:
        latents = router.put_reference_rows(call, rows.roles, keep_own=True)
        record = None
        plan = None
        if mode is not AttentionMode.PLAIN:
            record = [None] * router.layers if self.cache is not None else None
            plan = AttentionPlan(mode, rows.sources, record=record, record_rows=rows.count)
        router.pending = Pending(call, rows, latents, record, self.cache)
        return plan


class Replayed(InCall):
    """Recorded features: the first evaluation at a level records the reference rows in the call
    (as ``InCall``), later ones replay them from the feature cache and the call keeps its size."""

    def __init__(self, features: FeatureCache | None) -> None:
        self.cache = features

    def serve(self, router: RowRouter, call: ModelCall, rows: ReferenceRows, mode: AttentionMode,
              need_target: bool, planned: Planned) -> AttentionPlan | None:
        ev, cache = router.evaluation, self.cache
        key = evaluation_key(ev.sigma, ev.t)
        plain = mode is AttentionMode.PLAIN
        if not all(cache.has(key, role, need_features=not plain) for role in rows.roles):
            return super().serve(router, call, rows, mode, need_target, planned)
        if need_target:
            ev.eps_ref = cache.eps(key, Role.COND)
        if plain:
            return None
        banked = cache.banked(key, rows.roles, call.device)
        return AttentionPlan(mode, rows.sources[rows.count :], banked=banked)


class SeparatePass(Replayed):
    """A pass of its own through the model's own path records the evaluation's reference rows, which
    are then replayed into the unchanged call (another extension sizes its inputs by the call's rows).
    Without a feature cache, the rows of the open evaluation only: each evaluation drops the last's."""

    def __init__(self, features: FeatureCache | None) -> None:
        super().__init__(features)
        self.features = features

    def begin(self) -> None:
        if self.features is None:  # only the open evaluation's rows: nothing accumulates
            self.cache = FeatureCache(max_bytes=2**62, device_bytes=2**62)

    end = begin

    def reset(self) -> None:
        self.cache = self.features

    def serve(self, router: RowRouter, call: ModelCall, rows: ReferenceRows, mode: AttentionMode,
              need_target: bool, planned: Planned) -> AttentionPlan | None:
        self.reference_pass(router, call, mode, planned)
        return super().serve(router, call, rows, mode, need_target, planned)

    def reference_pass(self, router: RowRouter, call: ModelCall, mode: AttentionMode, planned: Planned) -> None:
        """Run the evaluation's missing reference rows through the model's own path and record them."""
        ev, cache = router.evaluation, self.cache
        key, plain = evaluation_key(ev.sigma, ev.t), mode is AttentionMode.PLAIN
        served = [] if plain else [*ev.roles, *(call.roles or [])]  # the whole layout where it is known
        wanted = reference_rows(served, router.shared, router.params.adain_active(ev.t))
        roles = tuple(r for r in wanted.roles if not cache.has(key, r, need_features=not plain))
        if not roles:
            return
        alone = call.alone()
        latents = router.put_reference_rows(alone, roles, keep_own=False)
        record: list[Tensor | None] = [None] * router.layers
        plan = AttentionPlan(
            AttentionMode.PLAIN, torch.arange(len(roles)), record=None if plain else record, record_rows=len(roles)
        )
        with planned(plan):
            output = alone.run()
        router.store(roles, Pending(alone, wanted, latents, None if plain else record, cache), output, ev)


class UNetCall:
    """A call of an ldm/sgm UNet module (A1111's): its arguments by role (x, t, context, y), wherever the
    forward's signature puts them; x is the VP latent, t the timestep, the output eps or v.

    A1111 replaces the UNet class's forward by ``forward(self, x, timesteps, context, *args, **kwargs)``,
    so SDXL's ``y`` arrives among the keyword extras rather than as a named parameter.
    """

    roles = None

    def __init__(self, unet: nn.Module, args: tuple, kwargs: dict, parameterization: str = "eps",
                 apart: bool = False) -> None:
        self.unet = unet
        self.parameterization = parameterization
        self.apart = apart
        self.signature = inspect.signature(type(unet).forward.__get__(unet))  # not an extension's wrapper
        self.bound = self.signature.bind(*args, **kwargs)
        self.extra = next((p.name for p in self.signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
        self.changed = False

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
        """The call's arguments as a forward pre-hook returns them."""
        return self.bound.args, dict(self.bound.kwargs)

    @property
    def rows(self) -> int:
        return self.get("x").shape[0]

    @property
    def device(self) -> torch.device:
        return self.get("x").device

    def reference_latent(self, chain: InversionChain, sigma: float, count: int) -> Tensor:
        x = self.get("x")
        z = chain.reference_vp(sigma).to(x.device, x.dtype)
        return z.unsqueeze(0).expand(count, *z.shape)

    def as_eps(self, output: Tensor, latent: Tensor, sigma: float) -> Tensor:
        if self.parameterization == "eps":
            return output.detach().clone()
        return eps_from_v(output, latent.to(output), float(abar_of_sigma(sigma)))

    def put_reference_rows(self, latents: Tensor, texts: Sequence[Conditioning], keep_own: bool) -> None:
        x = self.get("x")
        t = torch.as_tensor(self.get("t"), device=x.device).reshape(-1)
        own = Conditioning(self.get("context"), self.get("y"))
        joined = Conditioning.cat([*[text.like(own) for text in texts], *([own] if keep_own else [])])
        count = len(latents)
        self.set("x", torch.cat([latents, x]) if keep_own else latents)
        reference_t = t[:1].expand(count)
        self.set("t", torch.cat([reference_t, t.expand(x.shape[0])]) if keep_own else reference_t)
        self.set("context", joined.context)
        if joined.y is not None:
            self.set("y", joined.y)
        self.changed = True

    def alone(self) -> UNetCall:
        args, kwargs = self.args()
        return UNetCall(self.unet, args, kwargs, self.parameterization, self.apart)

    def run(self) -> Tensor:
        """Through the UNet's class forward: another extension's instance forward (ControlNet's) is skipped."""
        args, kwargs = self.args()
        return type(self.unet).forward(self.unet, *args, **kwargs)


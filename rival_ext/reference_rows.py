"""The reference rows of each model call: added, routed by role, taken back off, recorded.

Before a model call the router puts the reference rows for the current evaluation in front of the call's rows
(one reference after the other: latents from each chain at the evaluation's sigma, the call's own level, the
reference texts) and returns the self-attention plan; after it, it takes their outputs back off, keeping each
positive reference's cond-row eps as an AdaIN target. Callers see a model that behaves as before for their rows.
Where a call is made and what its arguments look like is the host's: ``ModelCall`` is that seam (A1111's UNet
call in ``UNetCall`` here, Forge's denoiser call in ``rival_ext.forge``).

How the reference rows reach the attention is a strategy: in the same call (``InCall``), replayed from recorded
features (``Replayed``, the feature cache), or a pass of their own (``SeparatePass``) for a call whose host says
another extension sizes its inputs by the call's rows (``ModelCall.apart``). Which rows of a call are cond or
uncond comes from the call itself where the host says (Forge's ``cond_or_uncond``), else from a cursor over the
evaluation's row layout, so any split of the rows into calls (A1111's batch_cond_uncond off, unequal prompt
lengths, skipped uncond) routes correctly; rows past the layout belong to a foreign call and are left alone.

One reference at weight 1, attention strength 1 and no mask is the paper's RIVAL: each generated row's attention
context is rewritten. Anything else is a blended plan (``attention.blended_output``): several references (a
weight of 0 leaves one out entirely), strengths, masks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .adain import Normalize, normalizer
from .attention import Args, AttentionPlan, Kwargs, Term
from .chain import InversionChain
from .conditioning import Conditioning, ReferenceRows, Role, reference_rows
from .feature_cache import FeatureCache, evaluation_key
from .noise import abar_of_sigma, eps_from_v
from .params import AttentionMode, RivalParams

Planned = Callable[[AttentionPlan], AbstractContextManager[None]]  # the session's plan for a block
ARG_NAMES = {"x": ("x", "sample"), "t": ("timesteps", "timestep", "t"), "context": ("context",), "y": ("y",)}


@dataclass(frozen=True)
class Reference:
    """One reference branch: its chain, the texts of its cond and uncond rows (one row each), its weight among
    several references (-1 .. 1; 0: left out) and the mask of the part of it RIVAL reads (latent grid)."""

    chain: InversionChain
    cond: Conditioning
    uncond: Conditioning
    weight: float = 1.0
    mask: Tensor | None = None

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
    eps_refs: dict[int, Tensor] = field(default_factory=dict)  # each reference's cond eps once a call computed it

    @property
    def eps_ref(self) -> Tensor | None:
        """The first reference's cond eps (the AdaIN target of the paper's single reference)."""
        return self.eps_refs.get(0)


@dataclass(frozen=True)
class Layout:
    """The reference rows in front of a call, reference after reference (``parts``: its index and its rows),
    and the roles of the call's own rows."""

    parts: tuple[tuple[int, ReferenceRows], ...]
    roles: tuple[Role, ...]

    @property
    def count(self) -> int:
        """Number of reference rows in front of the call."""
        return sum(rows.count for _, rows in self.parts)

    def offsets(self) -> list[tuple[int, int, ReferenceRows]]:
        """(reference index, first row, its rows) of each part."""
        out, row = [], 0
        for k, rows in self.parts:
            out.append((k, row, rows))
            row += rows.count
        return out

    def term_sources(self, part: int) -> Tensor:
        """Each call row's source row (in [reference rows, call rows]) for one part's reference."""
        _, row, rows = self.offsets()[part]
        return torch.tensor([row + _serving(rows, role) for role in self.roles], dtype=torch.long)


def _serving(rows: ReferenceRows, role: Role) -> int:
    """The reference row that serves call rows of ``role`` (the layout gave every role of the call one)."""
    index = rows.index(role)
    if index is None:
        raise RuntimeError(f"RIVAL: no reference row serves the call's {role.value} rows")
    return index


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
    attention plan ``before`` returns. ``references``: the first is the main one (its chain gives the start
    latent); ``where``: the latent-grid mask of where RIVAL acts; ``selected``: the layer indices RIVAL acts on.
    """

    def __init__(
        self,
        layers: int,
        params: RivalParams,
        references: Reference | Sequence[Reference],
        features: FeatureCache | None = None,
        where: Tensor | None = None,
        selected: frozenset[int] | None = None,
    ) -> None:
        self.layers = layers
        self.params = params
        self.references = (references,) if isinstance(references, Reference) else tuple(references)
        self.where = where
        self.selected = selected
        self.active = tuple(k for k, ref in enumerate(self.references) if ref.weight != 0.0)
        self.targets = tuple(k for k in self.active if self.references[k].weight > 0.0)  # AdaIN's references
        only = self.references[self.active[0]] if len(self.active) == 1 else None
        self.blended = not (only is not None and only.weight == 1.0 and only.mask is None and where is None
                            and params.attention_strength == 1.0)
        self.in_call: InCall = Replayed(features) if features is not None else InCall()
        self.apart = SeparatePass(features)
        self.evaluation: Evaluation | None = None
        self.pending: Pending | None = None

    @property
    def reference(self) -> Reference:
        """The main reference."""
        return self.references[0]

    @property
    def strategies(self) -> tuple[InCall, SeparatePass]:
        return self.in_call, self.apart

    @property
    def current(self) -> Evaluation:
        """The open evaluation, for what routes one of its calls (``before`` opened it)."""
        if self.evaluation is None:
            raise RuntimeError("RIVAL: a model call was routed with no evaluation open")
        return self.evaluation

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

    def adain_target(self, ev: Evaluation) -> Tensor | Normalize | None:
        """What the evaluation's guided prediction is normalized to: the main reference's eps (the paper's AdaIN)
        or a ``normalizer`` over the positive references, masks and the AdaIN strength; None: no target."""
        present = [k for k in self.targets if k in ev.eps_refs]
        if not present:
            return None
        refs = [self.references[k] for k in present]
        if (len(refs) == 1 and refs[0].weight == 1.0 and refs[0].mask is None and self.where is None
                and self.params.adain_strength == 1.0):
            return ev.eps_refs[present[0]]
        return normalizer([ev.eps_refs[k] for k in present], [r.weight for r in refs], [r.mask for r in refs],
                          self.params.adain_strength, self.where)

    def layout(self, roles: Sequence[Role], attention: bool, ev: Evaluation) -> Layout:
        """The fewest reference rows serving rows of ``roles``: each active reference's rows when the attention
        reads them, a positive reference's cond row (AdaIN target) while it is still missing."""
        adain = self.params.adain_active(ev.t)
        parts = []
        for k in self.active:
            ref = self.references[k]
            need_target = adain and k in self.targets and k not in ev.eps_refs
            rows = reference_rows(roles if attention else [], ref.shared, need_target)
            if rows.count:
                parts.append((k, rows))
        return Layout(tuple(parts), tuple(Role(r) for r in roles))

    def plan(self, mode: AttentionMode, layout: Layout, **kwargs: Any) -> AttentionPlan:
        """The attention plan of a call laid out so: the paper's context rewrite for one reference at full weight,
        else a blended plan over the parts' references."""
        if not self.blended:
            (_, rows), = layout.parts
            return AttentionPlan(mode, rows.sources, layers=self.selected, **kwargs)
        strength = self.params.attention_strength
        terms = tuple(Term(layout.term_sources(i), strength * self.references[k].weight, self.references[k].mask)
                      for i, (k, _) in enumerate(layout.parts))
        return AttentionPlan(mode, torch.empty(0, dtype=torch.long), layers=self.selected, terms=terms,
                             where=self.where, **kwargs)

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
        layout = self.layout(roles, mode is not AttentionMode.PLAIN, ev)
        if layout.count == 0:
            return None
        strategy = self.apart if call.apart else self.in_call
        return strategy.serve(self, call, layout, mode, planned)

    def after(self, output: Tensor) -> Tensor | None:
        """The call's output without the reference rows (None: unchanged); keeps the AdaIN targets."""
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        ev = self.evaluation
        if ev is not None:
            for k, row, rows in pending.layout.offsets():
                index = rows.index(Role.COND)
                if k in self.targets and index is not None and k not in ev.eps_refs:
                    at = slice(row + index, row + index + 1)
                    ev.eps_refs[k] = pending.call.as_eps(output[at], pending.latents[at], ev.sigma)
            if pending.cache is not None:
                self.store(pending.layout, pending, output, ev)
        return output[pending.layout.count :]

    def put_reference_rows(self, call: ModelCall, layout: Layout, keep_own: bool) -> Tensor:
        """The evaluation's reference rows of ``layout`` into ``call``; returns their latents."""
        sigma = self.current.sigma
        latents, texts = [], []
        for k, rows in layout.parts:
            ref = self.references[k]
            latents.append(call.reference_latent(ref.chain, sigma, rows.count))
            texts += [ref.text(role) for role in rows.roles]
        joined = torch.cat(latents)
        call.put_reference_rows(joined, texts, keep_own)
        return joined

    def store(self, layout: Layout, pending: Pending, output: Tensor, ev: Evaluation) -> None:
        """Put the reference rows' features (when all layers recorded) and eps in the pending call's cache."""
        cache = pending.cache
        if cache is None:  # nothing is kept
            return
        key = evaluation_key(ev.sigma, ev.t)
        record = pending.record
        recorded = [r for r in record or [] if r is not None]
        complete = record is not None and len(recorded) == len(record)
        for k, row, rows in layout.offsets():
            for i, role in enumerate(rows.roles):
                at = slice(row + i, row + i + 1)
                features = [r[at].clone() for r in recorded] if complete else None
                eps = pending.call.as_eps(output[at], pending.latents[at], ev.sigma)
                cache.put((*key, k), role, features, eps)


@dataclass(frozen=True)
class Pending:
    """A call that carries reference rows, between before and after: their layout, latents and recording,
    and the feature cache of the strategy that served it (None: nothing is kept)."""

    call: ModelCall
    layout: Layout
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

    def serve(self, router: RowRouter, call: ModelCall, layout: Layout, mode: AttentionMode,
              planned: Planned) -> AttentionPlan | None:
        latents = router.put_reference_rows(call, layout, keep_own=True)
        record: list[Tensor | None] | None = None
        plan = None
        if mode is not AttentionMode.PLAIN:
            record = [None] * router.layers if self.cache is not None else None
            plan = router.plan(mode, layout, record=record, record_rows=layout.count, generated=layout.count)
        router.pending = Pending(call, layout, latents, record, self.cache)
        return plan


class Replayed(InCall):
    """Recorded features: the first evaluation at a level records the reference rows in the call
    (as ``InCall``), later ones replay them from the feature cache and the call keeps its size."""

    def __init__(self, features: FeatureCache | None) -> None:
        self.cache = features

    @property
    def replay_cache(self) -> FeatureCache:
        """The cache the rows are replayed from (set from the first evaluation on)."""
        if self.cache is None:
            raise RuntimeError("RIVAL: the reference rows have no feature cache to be replayed from")
        return self.cache

    def serve(self, router: RowRouter, call: ModelCall, layout: Layout, mode: AttentionMode,
              planned: Planned) -> AttentionPlan | None:
        ev, cache = router.current, self.replay_cache
        key = evaluation_key(ev.sigma, ev.t)
        plain = mode is AttentionMode.PLAIN
        if not all(cache.has((*key, k), role, need_features=not plain) for k, rows in layout.parts
                   for role in rows.roles):
            return super().serve(router, call, layout, mode, planned)
        for k, rows in layout.parts:
            if k in router.targets and k not in ev.eps_refs and Role.COND in rows.roles:
                ev.eps_refs[k] = cache.eps((*key, k), Role.COND)
        if plain:
            return None
        banked = cache.banked([((*key, k), rows.roles) for k, rows in layout.parts], call.device)
        plan = router.plan(mode, layout, banked=banked)
        if plan.terms:
            return plan
        return AttentionPlan(mode, plan.sources[layout.count :], banked=banked, layers=plan.layers)


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

    def serve(self, router: RowRouter, call: ModelCall, layout: Layout, mode: AttentionMode,
              planned: Planned) -> AttentionPlan | None:
        self.reference_pass(router, call, mode, planned)
        return super().serve(router, call, layout, mode, planned)

    def reference_pass(self, router: RowRouter, call: ModelCall, mode: AttentionMode, planned: Planned) -> None:
        """Run the evaluation's missing reference rows through the model's own path and record them."""
        ev, cache = router.current, self.replay_cache
        key, plain = evaluation_key(ev.sigma, ev.t), mode is AttentionMode.PLAIN
        served = [] if plain else [*ev.roles, *(call.roles or [])]  # the whole layout where it is known
        wanted = router.layout(served, not plain, ev)
        parts = []
        for k, rows in wanted.parts:
            missing = tuple(r for r in rows.roles if not cache.has((*key, k), r, need_features=not plain))
            if missing:
                parts.append((k, ReferenceRows(missing, torch.empty(0, dtype=torch.long))))
        missing_layout = Layout(tuple(parts), ())
        if not parts:
            return
        alone = call.alone()
        latents = router.put_reference_rows(alone, missing_layout, keep_own=False)
        count = missing_layout.count
        record: list[Tensor | None] = [None] * router.layers
        plan = AttentionPlan(
            AttentionMode.PLAIN, torch.arange(count), record=None if plain else record, record_rows=count
        )
        with planned(plan):
            output = alone.run()
        router.store(missing_layout, Pending(alone, missing_layout, latents, None if plain else record, cache),
                     output, ev)


class UNetCall:
    """A call of an ldm/sgm UNet module (A1111's): its arguments by role (x, t, context, y), wherever the
    forward's signature puts them; x is the VP latent, t the timestep, the output eps or v.

    A1111 replaces the UNet class's forward by ``forward(self, x, timesteps, context, *args, **kwargs)``,
    so SDXL's ``y`` arrives among the keyword extras rather than as a named parameter.
    """

    roles = None

    def __init__(self, unet: nn.Module, args: Args, kwargs: Kwargs, parameterization: str = "eps",
                 apart: bool = False) -> None:
        self.unet = unet
        self.parameterization = parameterization
        self.apart = apart
        self.signature = inspect.signature(type(unet).forward.__get__(unet))  # not an extension's wrapper
        self.bound = self.signature.bind(*args, **kwargs)
        self.extra = next((p.name for p in self.signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
        self.changed = False

    def _slot(self, role: str) -> tuple[dict[str, Any], str] | None:
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

    def args(self) -> tuple[Args, Kwargs]:
        """The call's arguments as a forward pre-hook returns them."""
        return self.bound.args, dict(self.bound.kwargs)

    @property
    def x(self) -> Tensor:
        """The call's latent rows."""
        x: Tensor = self.get("x")
        return x

    @property
    def rows(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def reference_latent(self, chain: InversionChain, sigma: float, count: int) -> Tensor:
        x = self.x
        z = chain.reference_vp(sigma).to(x.device, x.dtype)
        return z.unsqueeze(0).expand(count, *z.shape)

    def as_eps(self, output: Tensor, latent: Tensor, sigma: float) -> Tensor:
        if self.parameterization == "eps":
            return output.detach().clone()
        return eps_from_v(output, latent.to(output), float(abar_of_sigma(sigma)))

    def put_reference_rows(self, latents: Tensor, texts: Sequence[Conditioning], keep_own: bool) -> None:
        x = self.x
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
        output: Tensor = type(self.unet).forward(self.unet, *args, **kwargs)
        return output

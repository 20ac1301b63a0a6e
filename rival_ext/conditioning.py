"""Text conditioning rows and how reference rows join a UNet call.

Rows of one UNet call must share a token length. Cross-attention over a context repeated k
times equals cross-attention over the context itself (every key/value pair appears k times, so
the softmax weights are split evenly among the copies), so contexts are tiled to the least
common multiple of their lengths: exact, and no padding token is invented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor


class Role(str, Enum):
    """Classifier-free-guidance role of a row."""

    COND = "cond"
    UNCOND = "uncond"


@dataclass(frozen=True)
class Conditioning:
    """Per-row UNet conditioning: cross-attention context and, for SDXL, the pooled vector."""

    context: Tensor  # (rows, tokens, dim)
    y: Tensor | None = None  # (rows, adm_dim) or None

    def __post_init__(self) -> None:
        if self.context.dim() != 3:
            raise ValueError(f"context must be (rows, tokens, dim), got {tuple(self.context.shape)}")
        if self.y is not None and (self.y.dim() != 2 or self.y.shape[0] != self.context.shape[0]):
            raise ValueError("y must be (rows, dim) with one row per context row")

    def __len__(self) -> int:
        return self.context.shape[0]

    def like(self, other: Conditioning) -> Conditioning:
        """These rows on the device and dtype of ``other``'s (a model call's own conditioning)."""
        y = None if other.y is None or self.y is None else self.y.to(other.y.device, other.y.dtype)
        return Conditioning(self.context.to(other.context.device, other.context.dtype), y)

    def rows(self, index: Tensor | slice | list[int]) -> Conditioning:
        """A subset of the rows."""
        return Conditioning(self.context[index], None if self.y is None else self.y[index])

    def repeat(self, n: int) -> Conditioning:
        """``n`` copies of the rows, for a batch that shares one text."""
        return Conditioning(
            self.context.expand(n, -1, -1) if len(self) == 1 else self.context.repeat(n, 1, 1),
            None if self.y is None else self.y.repeat(n, 1),
        )

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Stack rows, tiling token lengths to their least common multiple (exact, see module doc)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        has_y = [p.y is not None for p in parts]
        if any(has_y) and not all(has_y):
            raise ValueError("either every row or no row must carry a y vector")
        length = math.lcm(*(p.context.shape[1] for p in parts))
        contexts = [p.context.repeat(1, length // p.context.shape[1], 1) for p in parts]
        ys = None if parts[0].y is None else torch.cat([p.y for p in parts if p.y is not None])  # all, or none
        return Conditioning(torch.cat(contexts), ys)


@dataclass(frozen=True)
class ReferenceRows:
    """Reference rows put in front of a UNet call, and whose features each row of the call reads."""

    roles: tuple[Role, ...]  # role of each reference row, in order
    sources: Tensor  # (reference rows + call rows,) index of the row whose features a row reads

    @property
    def count(self) -> int:
        """Number of reference rows in front of the call."""
        return len(self.roles)

    def index(self, role: Role) -> int | None:
        """Row of the reference that serves ``role`` (a shared row serves both)."""
        if not self.roles:
            return None
        if len(self.roles) == 1 and self.roles[0] is Role.COND:
            return 0  # shared, or cond-only
        return self.roles.index(role) if role in self.roles else None


def reference_rows(roles: Sequence[Role], shared: bool, need_cond: bool = False) -> ReferenceRows:
    """The fewest reference rows that serve a call whose rows have ``roles``.

    One shared row when the reference-cond and reference-uncond texts are equal, else one row per
    role present. ``need_cond`` adds the reference-cond row (the AdaIN target) even when the call
    has no cond row. Reference rows read themselves (plain self-attention).
    """
    roles = [Role(r) for r in roles]
    wanted = set(roles) | ({Role.COND} if need_cond else set())
    if shared:
        ref_roles: tuple[Role, ...] = (Role.COND,) if wanted else ()
    else:
        ref_roles = tuple(r for r in (Role.COND, Role.UNCOND) if r in wanted)
    rows = ReferenceRows(ref_roles, torch.empty(0, dtype=torch.long))
    n = len(ref_roles)
    generated = [rows.index(r) for r in roles] if n else list(range(n, n + len(roles)))
    sources = torch.tensor(list(range(n)) + generated, dtype=torch.long)
    return ReferenceRows(ref_roles, sources)

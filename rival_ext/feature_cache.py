"""Optional cache of the reference rows' self-attention inputs and eps, per model evaluation.

The reference rows' outputs do not depend on the generated rows (they attend only to
themselves), so once a generation has run them at a given (sigma, t), a later generation with the
same chain and reference texts can replay their features instead of carrying the rows through
the UNet: every call is then exactly as large as a plain one. Features stay on the compute device
while they fit ``device_bytes``; the rest is kept in (pinned) CPU memory and the next evaluation's
features are copied ahead while the current one runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .conditioning import Role

Key = tuple[Hashable, ...]  # a reference's evaluation: ``evaluation_key`` and the reference's index
RowKey = tuple[Hashable, ...]  # one reference row there: the key and the row's role


@dataclass
class Recorded:
    """One reference row at one evaluation: its attn1 inputs (None if not recorded) and eps."""

    features: list[Tensor] | None
    eps: Tensor


def evaluation_key(sigma: float, t: float) -> tuple[float, float]:
    """Identity of a model evaluation, robust to float32/float64 round trips of sigma."""
    return (round(float(sigma), 6), round(float(t), 4))


class FeatureCache:
    """Recorded reference rows, bounded by ``max_bytes`` (recording stops when full)."""

    def __init__(self, max_bytes: int, device_bytes: int = 0) -> None:
        self.max_bytes = max_bytes
        self.device_bytes = device_bytes
        self.nbytes = 0
        self.on_device = 0
        self._items: OrderedDict[RowKey, Recorded] = OrderedDict()
        self._prefetched: dict[RowKey, list[Tensor]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def has(self, key: Key, role: Role, need_features: bool) -> bool:
        """Whether the row is stored (with its features, when attention needs them)."""
        item = self._items.get(_row(key, role))
        return item is not None and (item.features is not None or not need_features)

    def put(self, key: Key, role: Role, features: list[Tensor] | None, eps: Tensor) -> bool:
        """Store a row unless the cache is full; keeps what is already stored for that row."""
        old = self._items.get(_row(key, role))
        if old is not None and (old.features is not None or features is None):
            return True
        size = sum(f.numel() * f.element_size() for f in features or []) + eps.numel() * eps.element_size()
        if self.nbytes + size > self.max_bytes:
            return False
        if features is not None and self.on_device + size > self.device_bytes:
            features = [_offload(f) for f in features]
        elif features is not None:
            self.on_device += size
        self.nbytes += size
        self._items[_row(key, role)] = Recorded(features, eps)
        return True

    def eps(self, key: Key, role: Role) -> Tensor:
        """The eps of a stored reference row (``has``; the AdaIN target for the cond row)."""
        return self._items[_row(key, role)].eps

    def banked(self, parts: Sequence[tuple[Key, tuple[Role, ...]]], device: torch.device) -> list[Tensor]:
        """Per layer, the features of each part's rows (its key, its roles) stacked as rows, on ``device``;
        prefetches the rows stored after them."""
        items = [_row(key, role) for key, roles in parts for role in roles]
        per_row = [self._features(item) for item in items]
        layers = [torch.cat([feats[i].to(device, non_blocking=True) for feats in per_row])
                  for i in range(len(per_row[0]))]
        self._prefetch_after(items[-1], len(items), device)
        return layers

    def _features(self, item: RowKey) -> list[Tensor]:
        """A row's features: prefetched to the device, else as stored."""
        prefetched = self._prefetched.pop(item, None)
        if prefetched:
            return prefetched
        features = self._items[item].features
        if features is None:
            raise RuntimeError(f"RIVAL: the feature cache holds no attention features for {item}")
        return features

    def _prefetch_after(self, last: RowKey, count: int, device: torch.device) -> None:
        if device.type != "cuda":
            return
        keys = list(self._items)
        index = keys.index(last)
        for later in keys[index + 1 : index + 1 + count]:
            item = self._items[later]
            if item.features is not None and later not in self._prefetched:
                self._prefetched[later] = [f.to(device, non_blocking=True) for f in item.features]


def _row(key: Key, role: Role) -> RowKey:
    return (*key, role)


def _offload(t: Tensor) -> Tensor:
    cpu = t.detach().to("cpu")
    return cpu.pin_memory() if torch.cuda.is_available() else cpu

"""A small LRU cache of inversion chains, bounded in entries and bytes.

A chain is deterministic for its key (model and networks in effect, VAE, reference pixels, size,
sigma schedule, reference text, dtype), so a repeated generation, every batch of a batch count and
an XYZ grid over non-chain parameters reuse it and skip the inversion entirely.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from .chain import InversionChain


def chain_bytes(chain: InversionChain) -> int:
    """Memory a chain holds, for the byte bound."""
    return sum(t.numel() * t.element_size() for t in (chain.sigmas, chain.nodes, chain.x0, chain.eps))


class ChainCache:
    """Least-recently-used chains; ``max_entries`` 0 disables caching."""

    def __init__(self, max_entries: int = 4, max_bytes: int = 256 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, InversionChain] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Memory held by all cached chains."""
        return sum(chain_bytes(c) for c in self._items.values())

    def get(self, key: Hashable) -> InversionChain | None:
        """The chain for ``key`` (now the most recently used), or None."""
        chain = self._items.get(key)
        if chain is not None:
            self._items.move_to_end(key)
        return chain

    def put(self, key: Hashable, chain: InversionChain) -> None:
        """Store a chain, evicting the least recently used beyond the bounds."""
        self._items[key] = chain
        self._items.move_to_end(key)
        while self._items and (len(self._items) > self.max_entries or self.nbytes > self.max_bytes):
            self._items.popitem(last=False)

    def resize(self, max_entries: int, max_bytes: int | None = None) -> None:
        """Apply new bounds (from the settings), evicting what no longer fits."""
        self.max_entries = max_entries
        if max_bytes is not None:
            self.max_bytes = max_bytes
        while self._items and (len(self._items) > self.max_entries or self.nbytes > self.max_bytes):
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every chain."""
        self._items.clear()

"""Torch hook handles that are installed together and removed together, exactly once."""

from __future__ import annotations

from typing import Any


class HookHandles:
    """The handles of one installer; ``remove`` leaves the modules as they were (idempotent)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._handles: list[Any] = []

    def __bool__(self) -> bool:
        return bool(self._handles)

    def begin(self) -> None:
        """Refuse a second installation over the first."""
        if self._handles:
            raise RuntimeError(f"the RIVAL {self.what} hooks are already installed")

    def add(self, handle: Any) -> None:
        """Keep a handle for removal."""
        self._handles.append(handle)

    def remove(self) -> None:
        """Remove every handle, newest first."""
        while self._handles:
            self._handles.pop().remove()

"""Hooks that are installed together and removed together, exactly once: torch handles, swapped attributes."""

from __future__ import annotations

from collections.abc import Callable
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


def swap_attribute(obj: object, name: str, value: object) -> Callable[[], None]:
    """Set ``obj.name = value``; the returned function puts back exactly what was there before.

    An instance attribute is restored as it was; a class attribute is uncovered again by deleting
    ours. Restoring does nothing once someone else has replaced our value (their wrapper stays).
    """
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)

    def restore() -> None:
        if vars(obj).get(name) is not value:
            return
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)

    return restore

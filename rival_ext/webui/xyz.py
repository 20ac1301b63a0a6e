"""Axes for A1111's built-in X/Y/Z plot: each sets a named panel value on that cell's ``p``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .fields import TABLE, bool_text

OVERRIDES = "rival_overrides"


def overrides_of(p: object) -> dict[str, object]:
    """The panel values an X/Y/Z cell set on this ``p``."""
    return dict(getattr(p, OVERRIDES, None) or {})


def setter(name: str, convert: Callable[[Any], object]) -> Callable[[object, object, object], None]:
    """An AxisOption ``apply`` that overrides one named panel value for the cell."""
    def apply(p: object, value: object, _values: object) -> None:
        overrides = overrides_of(p)
        overrides[name] = convert(value)
        setattr(p, OVERRIDES, overrides)

    return apply


_bool = bool_text


def register_axes() -> bool:
    """Add the RIVAL axes to the X/Y/Z plot script if it is loaded (idempotent)."""
    from modules import scripts

    module = next(
        (d.module for d in getattr(scripts, "scripts_data", []) if d.script_class.__module__ == "xyz_grid.py"),
        None,
    )
    if module is None:
        return False
    if any(getattr(o, "label", "").startswith("[RIVAL]") for o in module.axis_options):
        return True
    for f in TABLE:
        if f.axis is not None:
            label, kind, convert, choices = f.axis
            module.axis_options.append(module.AxisOption(label, kind, setter(f.name, convert), choices=choices))
    return True

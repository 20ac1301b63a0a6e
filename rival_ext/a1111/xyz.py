"""Axes for A1111's built-in X/Y/Z plot: each sets a named panel value on that cell's ``p``."""

from __future__ import annotations

from collections.abc import Callable

from ..params import PRESETS

OVERRIDES = "rival_overrides"


def overrides_of(p: object) -> dict[str, object]:
    """The panel values an X/Y/Z cell set on this ``p``."""
    return dict(getattr(p, OVERRIDES, None) or {})


def setter(name: str, convert: Callable[[object], object]) -> Callable[[object, object, object], None]:
    """An AxisOption ``apply`` that overrides one named panel value for the cell."""
    def apply(p: object, value: object, _values: object) -> None:
        overrides = overrides_of(p)
        overrides[name] = convert(value)
        setattr(p, OVERRIDES, overrides)

    return apply


def _bool(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "on")


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
    axis = module.AxisOption
    module.axis_options.extend(
        [
            axis("[RIVAL] Enabled", str, setter("enabled", _bool), choices=lambda: ["True", "False"]),
            axis("[RIVAL] Preset", str, setter("preset", str), choices=lambda: list(PRESETS)),
            axis("[RIVAL] t_align", float, setter("t_align", float)),
            axis("[RIVAL] t_early", float, setter("t_early", float)),
            axis("[RIVAL] Early plain", float, setter("early_plain", float)),
        ]
    )
    return True

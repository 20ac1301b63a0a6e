"""sd-webui-controlnet's reference modes beside RIVAL in A1111: active in this request, or idle leftovers.

A ControlNet request with a reference unit (``reference_only``, ``reference_adain``, ``reference_adain+attn``) or
``[StyleAlign]`` replaces every transformer block's ``_forward`` (keeping the block's own as
``_original_inner_forward_cn_hijack``) and the forward of some UNet blocks (``original_forward_cn_hijack``), and
puts back only the UNet's forward afterwards (sd-webui-controlnet 1.1.455, scripts/hook.py ``UnetHook.hook`` and
``restore``). Those leftovers stay until ControlNet's next request with units. RIVAL decides per request:

* a reference unit or StyleAlign is on in *this* request: RIVAL is off for it and says which unit;
* only leftovers: RIVAL runs with the blocks' own forwards in place and puts ControlNet's back afterwards
  (``own_forwards``), so neither a stale mode of ControlNet's nor its bypass of the hooks can reach the image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from torch import nn

BLOCK_FORWARD = ("_forward", "_original_inner_forward_cn_hijack")  # transformer blocks: (replaced, own)
MODULE_FORWARD = ("forward", "original_forward_cn_hijack")  # the group-norm-hijacked UNet blocks


class Script(Protocol):
    """One of the request's always-on scripts (``p.scripts.alwayson_scripts``)."""

    def title(self) -> str:
        """The script's name (ControlNet's is "ControlNet")."""
        ...


def active_reference(p: object) -> str | None:
    """The ControlNet reference unit (or StyleAlign) this request uses, as the note names it; None: none."""
    runner = getattr(p, "scripts", None)
    script = next((s for s in getattr(runner, "alwayson_scripts", []) if _title(s) == "ControlNet"), None)
    if script is None:
        return None
    for index, unit in enumerate(getattr(script, "enabled_units", None) or []):
        module = str(_field(unit, "module") or "")
        if "reference" in module and _field(unit, "enabled") is not False:
            return f"ControlNet unit {index} ({module})"
    style_align = (getattr(script, "ui_batch_option_state", None) or [None, False])[1]
    return "ControlNet's [StyleAlign]" if style_align else None


@contextmanager
def own_forwards(unet: nn.Module) -> Iterator[None]:
    """The UNet's blocks with their own forwards for the block, ControlNet's replacements put back after it."""
    swapped: list[tuple[nn.Module, str, object]] = []
    try:
        for module in unet.modules():
            for replaced, own in (BLOCK_FORWARD, MODULE_FORWARD):
                original = getattr(module, own, None)
                if original is not None and replaced in vars(module) and vars(module)[replaced] is not original:
                    swapped.append((module, replaced, vars(module)[replaced]))
                    setattr(module, replaced, original)
        yield
    finally:
        for module, replaced, theirs in reversed(swapped):
            setattr(module, replaced, theirs)


def _title(script: Script) -> str:
    try:
        return str(script.title())
    except Exception:
        return ""


def _field(unit: object, name: str) -> object:
    return unit.get(name) if isinstance(unit, dict) else getattr(unit, name, None)

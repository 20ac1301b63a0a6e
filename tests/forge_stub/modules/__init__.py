"""Test-only stand-in for Forge's ``modules`` package (lllyasviel/stable-diffusion-webui-forge main, dfdcbab6).

Forge keeps A1111's ``modules`` and changes a few of them: the modules here are Forge's versions; every other
``modules.X`` is the A1111 stub's (``tests/a1111_stub/modules``, appended to this package's path). A Forge
module that changes only part of A1111's builds on the A1111 stub's module, loaded under another name by
``a1111_module``. See tests/forge_stub/README.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

A1111_MODULES = Path(__file__).resolve().parents[2] / "a1111_stub" / "modules"
__path__.append(str(A1111_MODULES))


def a1111_module(name: str):
    """The A1111 stub's ``modules/<name>.py``, which a Forge module of that name builds on."""
    full = f"modules._a1111_{name}"
    if full not in sys.modules:
        spec = importlib.util.spec_from_file_location(full, A1111_MODULES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]

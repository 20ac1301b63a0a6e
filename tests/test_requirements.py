"""The test requirements resolve from PyPI alone: no pin may carry a local version label.

A local label (``torch==2.13.0+cpu``) names a build that only another index (PyTorch's own) or a local wheel
store has: from PyPI pip answers ``ResolutionImpossible``. A plain pin (``torch==2.13.0``) still matches a local
``+cpu`` wheel where one lies in pip's find-links. ``tests/check_locks.sh`` runs the real check (a dry run of each
leg against PyPI only, needs the network).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*===?\s*(\S+)")


def requirement_files() -> list[Path]:
    return sorted(ROOT.glob("requirements*.txt"))


def test_the_requirement_files_are_found() -> None:
    names = {path.name for path in requirement_files()}
    assert {"requirements-test.txt", "requirements-test-lock.txt", "requirements-test-users.txt",
            "requirements-test-users-lock.txt", "requirements-test-common.txt"} <= names


def test_no_pin_has_a_local_version_label() -> None:
    local = []
    for path in requirement_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            pin = PIN.match(line.split("#", 1)[0])
            if pin and "+" in pin.group(2):
                local.append(f"{path.name}:{number}: {line.strip()}")
    assert not local, "a local version label is not on PyPI; pin the public version instead:\n" + "\n".join(local)

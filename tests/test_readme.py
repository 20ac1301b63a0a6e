"""README's troubleshooting section lists every message the code can show a user.

The messages are found in the source (its syntax tree): what RIVAL raises as a 422 or 500 (``RivalInputError``,
``RivalRuntimeError``, a ``RuntimeError`` that begins with "RIVAL:"), the ``ValueError`` of the modules whose
errors reach the user as a 422 or 500 (parameters, layers, images, the hosts' VAE check, the inversion), the
``UnsupportedModel`` reasons and ``RIVAL notes`` (``note``, ``stop``). Each message's longest literal part must
appear in the section (whitespace folded), so a new message without its line fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALWAYS = {"RivalInputError", "RivalRuntimeError", "UnsupportedModel", "NonFiniteInversion", "note", "stop"}
# The modules whose ValueError reaches a user: parsed values (422), the VAE and the inversion's checks (500).
USER_VALUE_ERRORS = {"params.py", "layers.py", "image.py", "a1111/model.py", "forge/host.py"}
SHORTEST = 10  # characters of literal text that identify a message


def literal_parts(node: ast.expr) -> list[str]:
    """The literal text pieces of a message expression (an f-string's text between its placeholders)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        parts, current = [], ""
        for value in node.values:
            if isinstance(value, ast.Constant):
                current += value.value
            else:
                parts.append(current)
                current = ""
        return [*parts, current]
    if isinstance(node, ast.BinOp):
        return literal_parts(node.left) + literal_parts(node.right)
    if isinstance(node, ast.IfExp):
        return literal_parts(node.body) + literal_parts(node.orelse)
    return []


def user_messages() -> dict[str, str]:
    """'file:line' -> the message's longest literal part, for every message a user can see."""
    found = {}
    for path in sorted((ROOT / "rival_ext").rglob("*.py")):
        module = path.relative_to(ROOT / "rival_ext").as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            parts = [" ".join(p.split()) for p in literal_parts(node.args[0])]
            text = max(parts, key=len, default="").strip()
            shown = (name in ALWAYS or (name == "ValueError" and module in USER_VALUE_ERRORS)
                     or (name == "RuntimeError" and "".join(parts).startswith("RIVAL:")))
            if shown and len(text) >= SHORTEST:
                found[f"{module}:{node.lineno}"] = text.removeprefix("RIVAL: ")
    return found


def troubleshooting() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    return " ".join(section.replace("`", "").split())


def test_every_user_message_is_in_the_troubleshooting_section():
    section = troubleshooting()
    missing = {where: text for where, text in user_messages().items() if text not in section}
    assert not missing, f"messages missing from README's Troubleshooting: {missing}"


def test_the_scan_sees_the_messages_of_each_kind():
    """Not vacuous: the scan finds 422s, 500s, notes and model refusals, and a made-up message is missing."""
    messages = set(user_messages().values())
    for text in ("is not valid base64", "out of GPU memory while inverting the reference",
                 "chain from cache", "unCLIP models are not supported", "must be a finite number in",
                 "the VAE produced NaN/inf for the reference; try an fp16-fix VAE or --vae-in-fp32"):
        assert any(text in m for m in messages), text
    assert "the moon is made of cheese" not in troubleshooting()
    assert not re.search(r"expected at most", troubleshooting())

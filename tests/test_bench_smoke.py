"""The benchmark runs end to end on toy UNets (ldm only) and prints sane ratios.

Timings are not checked: they depend on the machine. What must hold anywhere is that every scheme
completes through the library's code paths and every ratio it prints is a finite positive number.
"""

from __future__ import annotations

import math
import re

from bench.bench_rival import main

RATIO = re.compile(r"(?<![\w.])(-?(?:\d+(?:\.\d+)?|nan|inf))x\b")


def _check(result: dict, printed: str) -> None:
    assert result["ratios"], "the benchmark returned no ratios"
    for name, value in result["ratios"].items():
        assert math.isfinite(value) and value > 0, f"{name} = {value}"
    printed_ratios = RATIO.findall(printed)
    assert printed_ratios, "the report printed no ratios"
    for text in printed_ratios:
        value = float(text)
        assert math.isfinite(value) and value > 0, f"printed ratio {text}x"


def test_tiny_benchmark_completes_with_finite_positive_ratios(capsys, tmp_path) -> None:
    out = tmp_path / "results.md"
    result = main(["--tiny", "--out", str(out)])
    printed = capsys.readouterr().out
    _check(result, printed)
    for key in ("first", "repeat", "batch4", "features", "separate", "official"):
        assert f"sd15.{key}.wall" in result["ratios"]
    assert "| plain, batch 1 |" in printed
    assert out.read_text() == result["report"]


def test_tiny_benchmark_sdxl_adapter(capsys) -> None:
    """The diffusers adapter (SDXL's architecture) takes the same hooks."""
    result = main(["--tiny", "--arch", "sdxl", "--steps", "3"])
    _check(result, capsys.readouterr().out)
    assert "sdxl.repeat.wall" in result["ratios"]

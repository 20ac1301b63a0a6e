"""The benchmark runs end to end on toy UNets (ldm only) and prints sane ratios.

Timings are not checked: they depend on the machine. What must hold anywhere is that every scheme
completes through the library's code paths and every ratio it prints is a finite positive number.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from bench.bench_rival import ISSUE16, Expect, main, make_bench, parse_args

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
    for key in ISSUE16:  # each checked against its probe counts inside the run (Expect)
        assert f"sd15.{key}.wall" in result["ratios"]
        assert f"sd15.{key}.wall.repeat" in result["ratios"]
    assert "| plain, batch 1 |" in printed
    assert "#### Issue 16: strength, references, masks, layers" in printed
    assert out.read_text() == result["report"]


def test_tiny_benchmark_sdxl_adapter(capsys) -> None:
    """The diffusers adapter (SDXL's architecture) takes the same hooks."""
    result = main(["--tiny", "--arch", "sdxl", "--steps", "3"])
    _check(result, capsys.readouterr().out)
    assert "sdxl.repeat.wall" in result["ratios"]


def test_tiny_benchmark_runs_a_selection_of_schemes(capsys) -> None:
    """``--schemes``: plain batch 1 always, the RIVAL repeat with issue 16's (its chain cached untimed)."""
    result = main(["--tiny", "--schemes", "mask,refs2"])
    printed = capsys.readouterr().out
    _check(result, printed)
    assert {k.split(".")[1] for k in result["ratios"]} == {"repeat", "mask", "refs2"}
    assert "first image" not in printed


def test_the_probe_catches_a_scheme_that_ran_another_path() -> None:
    """A plain generation does not pass as a blended one, nor a RIVAL repeat as a two-reference one."""
    args = parse_args(["--tiny"])
    with torch.inference_mode():
        b = make_bench("sd15", args, torch.device("cpu"), torch.float32)
        layers = len(b.probe.layers)
        b.probe.reset()
        b.plain(1)
        Expect(layers, 0, 2, None).check("plain1", b.probe, calls=b.steps)
        with pytest.raises(RuntimeError, match="did not run the path it claims"):
            Expect(2 * layers, layers, 3, 2).check("strength", b.probe, calls=b.steps)
        b.cache_chains(1)
        b.probe.reset()
        b.rival(1, cached=True)
        with pytest.raises(RuntimeError, match="did not run the path it claims"):
            Expect(3 * layers, 2 * layers, 4, 2).check("refs2", b.probe, calls=b.steps)

"""``bench/bench_server.py`` against a stand-in WebUI API: the schemes it sends, the checks that stop it, its report.

No server here: a fake ``requests.Session`` answers txt2img as a WebUI with RIVAL would (its infotext says
``chain from cache`` for a reference it has seen), so what is checked is the script's own logic.
"""

from __future__ import annotations

import base64
import io
import json as jsonlib
import re
from typing import ClassVar

import pytest
import requests
from PIL import Image

from bench import bench_server


class Response:
    def __init__(self, body: dict, status: int = 200) -> None:
        self.status_code = status
        self.ok = status == 200
        self._body = body
        self.text = jsonlib.dumps(body)

    def json(self) -> dict:
        return self._body


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class FakeWebUI:
    """txt2img with RIVAL's infotext: a reference seen before comes ``from cache`` unless ``forget``.

    Its own clock (``perf_counter``) advances by a fixed time per request, so the report's figures are exact:
    plain 2 s, RIVAL with a new reference 5 s, with the cached one 3 s.
    """

    SECONDS: ClassVar[dict[str, float]] = {"plain": 2.0, "first": 5.0, "repeat": 3.0}

    def __init__(self, forget: bool = False) -> None:
        self.seen: set[str] = set()
        self.requests: list[dict] = []
        self.forget = forget
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def get(self, url: str, timeout: float) -> Response:
        if url.endswith("/internal/sysinfo"):
            return Response({"Version": "f2.0.1-test"})
        return Response({"sd_model_checkpoint": "sd15-random.safetensors"})

    def post(self, url: str, json: dict, timeout: float) -> Response:
        self.requests.append(json)
        text = "a photo of a cat\nSteps: 10, Sampler: Euler"
        scripts = json.get("alwayson_scripts") or {}
        if "RIVAL" in scripts:
            reference = scripts["RIVAL"]["args"][0]["reference_image"]
            cached = reference in self.seen and not self.forget
            self.seen.add(reference)
            text += ", RIVAL: Variation" + (", RIVAL notes: chain from cache" if cached else "")
            self.now += self.SECONDS["repeat" if cached else "first"]
        else:
            self.now += self.SECONDS["plain"]
        return Response({"images": [png()], "info": jsonlib.dumps({"infotexts": [text]})})


def run(monkeypatch: pytest.MonkeyPatch, webui: FakeWebUI, *argv: str) -> dict:
    monkeypatch.setattr(requests, "Session", lambda: webui)
    monkeypatch.setattr(bench_server, "time", webui)  # the script times requests with time.perf_counter
    return bench_server.main(["--url", "http://webui.test/", "--runs", "2", *argv])


def test_each_run_sends_plain_a_new_reference_and_the_repeated_one(monkeypatch, capsys) -> None:
    webui = FakeWebUI()
    result = run(monkeypatch, webui, "--label", "Forge", "--size", "64")
    timed = webui.requests[2:]  # after one warm-up round: plain, then the fixed reference
    assert len(timed) == 6
    plain, first, repeat = timed[0::3], timed[1::3], timed[2::3]
    assert all("alwayson_scripts" not in p for p in plain)
    firsts = [p["alwayson_scripts"]["RIVAL"]["args"][0]["reference_image"] for p in first]
    repeats = [p["alwayson_scripts"]["RIVAL"]["args"][0]["reference_image"] for p in repeat]
    fixed = webui.requests[1]["alwayson_scripts"]["RIVAL"]["args"][0]["reference_image"]
    assert len(set(firsts)) == 2 and fixed not in firsts and set(repeats) == {fixed}
    assert all(p["width"] == p["height"] == 64 for p in timed)
    printed = capsys.readouterr().out
    assert "Forge version f2.0.1-test" in printed and "sd15-random.safetensors" in printed
    for title in bench_server.TITLES.values():
        assert title in printed
    ratios = [float(r) for r in re.findall(r"\| (-?\d+\.\d\d)x \|", printed)]
    assert ratios == [1.0, 2.5, 1.5, 1.0]  # plain, first, repeat, first minus repeat
    assert result["medians"] == {"plain": 2.0, "first": 5.0, "repeat": 3.0}


def test_a_repeat_that_was_not_served_from_the_cache_stops_the_benchmark(monkeypatch) -> None:
    with pytest.raises(SystemExit, match="repeat: the chain was not taken from the cache"):
        run(monkeypatch, FakeWebUI(forget=True))


def test_a_failed_request_stops_the_benchmark(monkeypatch) -> None:
    webui = FakeWebUI()
    monkeypatch.setattr(webui, "post", lambda url, json, timeout: Response({"detail": "RIVAL: bad"}, 422))
    with pytest.raises(SystemExit, match="HTTP 422"):
        run(monkeypatch, webui)

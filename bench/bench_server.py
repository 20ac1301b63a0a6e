"""Time whole generations through a running WebUI's HTTP API: plain, RIVAL's first image, RIVAL's repeat.

``bench_rival.py`` times the library's UNet calls; this script times what a user waits for: a txt2img
request to a running A1111, Forge or reForge (started with ``--api``, the RIVAL extension installed),
text encoder, VAE and the WebUI's own sampling path included. Three schemes, in turn within each run so
that drift hits them alike:

* **plain**: the request without RIVAL (no ``alwayson_scripts``): the WebUI's own sampling.
* **RIVAL first image**: RIVAL on with a reference no earlier request used (the reference with a few
  pixels of its first row set from random bytes), so the inversion runs. Its infotext must not say
  ``chain from cache``.
* **RIVAL repeat**: RIVAL on with the same reference every time (inverted once in the warm-up), so the
  chain comes from the cache. Its infotext must say ``chain from cache``.

A request that fails, or a RIVAL scheme whose infotext shows the other path, stops the benchmark. The
script prints the medians over the runs and their ratios to plain, as a Markdown table, and names the
WebUI by ``GET /internal/sysinfo`` (its ``Version``; ``--label`` when that is not served, or to add to it).

  python bench/bench_server.py --url http://127.0.0.1:7861 --size 256 --steps 10 --runs 3
  python bench/bench_server.py --url http://127.0.0.1:7860 --label A1111 --out a1111.md --json a1111.json

Only the standard library at import; ``requests``, ``numpy`` and ``Pillow`` when it runs.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import time
from typing import Any

SCHEMES = ("plain", "first", "repeat")
TITLES = {
    "plain": "plain (RIVAL not in the request)",
    "first": "RIVAL first image (new reference: inversion + sampling)",
    "repeat": "RIVAL repeat (same reference: chain from cache)",
}
CACHE_NOTE = "chain from cache"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860", help="the WebUI's address (default %(default)s)")
    ap.add_argument("--label", default="", help="a name for the WebUI in the report (added to its version)")
    ap.add_argument("--checkpoint", default="", help="sd_model_checkpoint to request (default: the loaded one)")
    ap.add_argument("--size", type=int, default=256, help="width and height in pixels (default %(default)s)")
    ap.add_argument("--steps", type=int, default=10, help="sampling steps (default %(default)s)")
    ap.add_argument("--sampler", default="Euler", help="sampler name (default %(default)s)")
    ap.add_argument("--cfg", type=float, default=7.0, help="CFG scale (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="seed of every request (default %(default)s)")
    ap.add_argument("--prompt", default="a photo of a cat", help="prompt (default %(default)r)")
    ap.add_argument("--preset", default="variation", help="RIVAL preset (default %(default)s)")
    ap.add_argument("--reference", default="", help="reference image file (default: a synthetic image)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs, each one request per scheme (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed plain + repeat rounds first: model load, chain of the repeat (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per request (default %(default)s)")
    ap.add_argument("--out", default="", help="also write the Markdown report here")
    ap.add_argument("--json", default="", help="also write every timing here (JSON)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 1:
        ap.error("--runs and --warmup must be at least 1 (the repeat needs its chain inverted once)")
    return args


def reference_png(args: argparse.Namespace, stamp: bytes = b"") -> str:
    """Base64 PNG of the reference at the generation size; ``stamp`` (RGB bytes) overwrites its first pixels."""
    import numpy as np
    from PIL import Image

    size = args.size
    if args.reference:
        picture = Image.open(args.reference).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        image = np.asarray(picture).copy()
    else:  # smooth colour gradients plus seeded noise: a reference with structure and statistics
        y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        noise = np.random.default_rng(0).normal(0.0, 20.0, (size, size, 3))
        base = np.stack([255 * x, 255 * y, 255 * (1 - x) * y], axis=-1)
        image = np.clip(base + noise, 0, 255).astype(np.uint8)
    if stamp:
        pixels = np.frombuffer(stamp, dtype=np.uint8).reshape(-1, 3)
        image[0, : len(pixels)] = pixels
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def payload(args: argparse.Namespace, reference: str | None) -> dict[str, Any]:
    p: dict[str, Any] = {
        "prompt": args.prompt, "negative_prompt": "", "steps": args.steps, "sampler_name": args.sampler,
        "cfg_scale": args.cfg, "seed": args.seed, "width": args.size, "height": args.size,
        "batch_size": 1, "n_iter": 1, "save_images": False, "send_images": True,
    }
    if args.checkpoint:
        p["override_settings"] = {"sd_model_checkpoint": args.checkpoint}
        p["override_settings_restore_afterwards"] = False
    if reference is not None:
        p["alwayson_scripts"] = {"RIVAL": {"args": [{"enabled": True, "reference_image": reference,
                                                     "preset": args.preset}]}}
    return p


def generate(session: Any, args: argparse.Namespace, scheme: str, reference: str | None) -> tuple[float, str]:
    """One txt2img request: its wall time and the first image's infotext. Fails loudly on anything else.

    ``scheme`` "warm-up" checks only that the request succeeded.
    """
    t0 = time.perf_counter()
    response = session.post(f"{args.url}/sdapi/v1/txt2img", json=payload(args, reference), timeout=args.timeout)
    wall = time.perf_counter() - t0
    if response.status_code != 200:
        raise SystemExit(f"{scheme}: HTTP {response.status_code}: {response.text[:500]}")
    body = response.json()
    if not body.get("images"):
        raise SystemExit(f"{scheme}: no image in the response")
    info = json.loads(body.get("info") or "{}")
    infotext = (info.get("infotexts") or [""])[0]
    if scheme in ("first", "repeat") and "RIVAL" not in infotext:
        raise SystemExit(f"{scheme}: RIVAL left no entry in the infotext; is the extension installed? {infotext!r}")
    if scheme == "first" and CACHE_NOTE in infotext:
        raise SystemExit(f"first: the chain came from the cache, so no inversion was timed: {infotext!r}")
    if scheme == "repeat" and CACHE_NOTE not in infotext:
        raise SystemExit(f"repeat: the chain was not taken from the cache (is the cache off?): {infotext!r}")
    return wall, infotext


def webui_name(session: Any, args: argparse.Namespace) -> tuple[str, str]:
    """(WebUI name and version, loaded checkpoint), from the WebUI's own endpoints where it serves them."""
    version = ""
    try:
        response = session.get(f"{args.url}/internal/sysinfo", timeout=60)
        if response.ok:
            version = str(json.loads(response.text).get("Version", ""))
    except (ValueError, OSError):
        pass
    name = " ".join(part for part in (args.label, f"version {version}" if version else "") if part) or "unnamed WebUI"
    checkpoint = args.checkpoint
    if not checkpoint:
        try:
            checkpoint = str(session.get(f"{args.url}/sdapi/v1/options", timeout=60).json().get("sd_model_checkpoint"))
        except (ValueError, OSError):
            checkpoint = "?"
    return name, checkpoint


def report(args: argparse.Namespace, name: str, checkpoint: str, times: dict[str, list[float]],
           load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    medians = {s: statistics.median(times[s]) for s in SCHEMES}
    plain = medians["plain"]
    lines = [
        f"WebUI: {name}; checkpoint {checkpoint}; {args.size}x{args.size}, {args.steps} steps, {args.sampler}, "
        f"CFG {args.cfg:g}, batch 1, preset {args.preset}; {args.runs} runs after {args.warmup} warm-up round(s); "
        f"load average {', '.join(f'{v:.2f}' for v in load[0])} at the start, "
        f"{', '.join(f'{v:.2f}' for v in load[1])} at the end",
        "",
        "| scheme | median wall s | ratio to plain | runs (s) |",
        "|---|---|---|---|",
    ]
    for s in SCHEMES:
        runs = ", ".join(f"{t:.2f}" for t in times[s])
        lines.append(f"| {TITLES[s]} | {medians[s]:.2f} | {medians[s] / plain:.2f}x | {runs} |")
    inversion = medians["first"] - medians["repeat"]
    lines.append(f"| - first minus repeat (about the inversion) | {inversion:.2f} | {inversion / plain:.2f}x | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import requests

    args = parse_args(argv)
    args.url = args.url.rstrip("/")
    session = requests.Session()
    name, checkpoint = webui_name(session, args)
    load_start = os.getloadavg()
    print(f"{name}, {checkpoint}: warm-up", file=sys.stderr, flush=True)
    fixed = reference_png(args)
    for _ in range(args.warmup):  # the first request may load the model; the repeat's chain is inverted here
        generate(session, args, "warm-up", None)
        generate(session, args, "warm-up", fixed)
    times: dict[str, list[float]] = {s: [] for s in SCHEMES}
    for run in range(args.runs):
        for scheme in SCHEMES:
            new = reference_png(args, os.urandom(12))  # 4 random pixels: a reference no request has used
            reference = {"plain": None, "first": new, "repeat": fixed}[scheme]
            wall, _ = generate(session, args, scheme, reference)
            times[scheme].append(wall)
            print(f"run {run + 1}/{args.runs} {scheme}: {wall:.2f} s", file=sys.stderr, flush=True)
    text = report(args, name, checkpoint, times, (load_start, os.getloadavg()))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    result = {"webui": name, "checkpoint": checkpoint, "args": vars(args), "times": times,
              "medians": {s: statistics.median(times[s]) for s in SCHEMES}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()

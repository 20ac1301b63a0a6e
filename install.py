"""Run by A1111 at every start: RIVAL needs nothing beyond what A1111 ships (torch, numpy, pillow,
einops, gradio); this only installs einops on the rare setup that lacks it."""

import launch

if not launch.is_installed("einops"):
    launch.run_pip("install einops", "einops for sd-webui-rival")

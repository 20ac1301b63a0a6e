"""RIVAL's section on A1111's Settings page."""

from __future__ import annotations

from ..host import Settings
from ..job import CHAINS
from ..params import PRESETS

SECTION = ("rival", "RIVAL")


def add_settings() -> None:
    """``on_ui_settings``: default preset and the chain cache's bounds."""
    import gradio as gr
    from modules import shared

    options = {
        "rival_default_preset": shared.OptionInfo(
            PRESETS["variation"].title, "Default RIVAL application preset", gr.Dropdown,
            {"choices": [p.title for p in PRESETS.values()]}, section=SECTION,
        ).needs_reload_ui(),
        "rival_chain_cache_entries": shared.OptionInfo(
            4, "Inversion chains kept in memory (0 = invert every time)", gr.Slider,
            {"minimum": 0, "maximum": 32, "step": 1}, onchange=apply_cache_settings, section=SECTION,
        ),
        "rival_chain_cache_mb": shared.OptionInfo(
            256, "Memory for cached inversion chains (MB)", gr.Slider,
            {"minimum": 16, "maximum": 4096, "step": 16}, onchange=apply_cache_settings, section=SECTION,
        ),
        "rival_inversion_precision": shared.OptionInfo(
            "fp32", "Precision of the reference's inversion", gr.Radio,
            {"choices": ["fp32", "model"]}, section=SECTION,
        ).info("fp32: the UNet is upcast for the inversion only (exact, costs memory while it runs); "
               "model: the checkpoint's precision, redone in fp32 if it overflows"),
        "rival_inversion_steps": shared.OptionInfo(
            0, "Inversion steps (0 = as many as the sampler takes)", gr.Slider,
            {"minimum": 0, "maximum": 150, "step": 1}, section=SECTION,
        ).info("fewer steps make the first image with a new reference faster; the sampler's other "
               "levels are read from the chain by its segment rule (official invert_step)"),
        "rival_feature_cache": shared.OptionInfo(
            False, "Cache the reference's attention features (repeat generations need no reference rows; "
            "uses memory)", section=SECTION,
        ),
        "rival_feature_cache_mb": shared.OptionInfo(
            4096, "Memory for cached reference features in total (MB)", gr.Slider,
            {"minimum": 256, "maximum": 32768, "step": 256}, section=SECTION,
        ),
        "rival_feature_cache_gpu_mb": shared.OptionInfo(
            1024, "Of which on the GPU (MB, at most the total); the rest waits in pinned CPU memory and is prefetched",
            gr.Slider, {"minimum": 0, "maximum": 32768, "step": 256}, section=SECTION,
        ),
    }
    for key, info in options.items():
        shared.opts.add_option(key, info)
    stored = shared.opts.data.get("rival_default_preset")
    if stored in PRESETS:  # saved by an older version as the preset's id: show its title
        shared.opts.data["rival_default_preset"] = PRESETS[stored].title


def apply_cache_settings() -> None:
    """Bound the chain cache by the current settings (called for every generation)."""
    from modules import shared

    opts = shared.opts
    entries = int(getattr(opts, "rival_chain_cache_entries", 4))
    megabytes = int(getattr(opts, "rival_chain_cache_mb", 256))
    CHAINS.resize(entries, megabytes * 2**20)


def default_preset() -> str:
    """The preset the panel starts with (the setting holds its title; older settings its name)."""
    from modules import shared

    value = getattr(shared.opts, "rival_default_preset", "variation")
    name = next((name for name, p in PRESETS.items() if value in (name, p.title)), None)
    return name or "variation"


def current() -> Settings:
    """The settings a generation reads, from Settings > RIVAL and the WebUI's own options."""
    from modules import shared

    opts = shared.opts
    feature_cache = bool(getattr(opts, "rival_feature_cache", False))
    return Settings(
        inversion_steps=int(getattr(opts, "rival_inversion_steps", 0) or 0),
        inversion_precision=str(getattr(opts, "rival_inversion_precision", "fp32")),
        feature_cache_bytes=int(getattr(opts, "rival_feature_cache_mb", 4096)) * 2**20 if feature_cache else 0,
        feature_cache_device_bytes=int(getattr(opts, "rival_feature_cache_gpu_mb", 1024)) * 2**20,
        img2img_extra_noise=bool(getattr(opts, "img2img_extra_noise", 0)),
        sgm_noise_multiplier=bool(getattr(opts, "sgm_noise_multiplier", False)),
    )

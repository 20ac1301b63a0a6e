"""Global callback registry of A1111 v1.10.1 (only the categories an extension like this one uses).

Dispatchers catch and log every exception (``errors.report``) and carry on, exactly like A1111.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from modules import errors


# A1111: modules/script_callbacks.py ExtraNoiseParams
@dataclasses.dataclass
class ExtraNoiseParams:
    noise: Any
    x: Any
    xi: Any


# A1111: modules/script_callbacks.py CFGDenoiserParams (field order as A1111's constructor call)
@dataclasses.dataclass
class CFGDenoiserParams:
    """Fields read back after the callback: x, image_cond, sigma, text_cond, text_uncond."""

    x: Any
    image_cond: Any
    sigma: Any
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


# A1111: modules/script_callbacks.py CFGDenoisedParams
@dataclasses.dataclass
class CFGDenoisedParams:
    """Only in-place edits of ``x`` have an effect."""

    x: Any
    sampling_step: int
    total_sampling_steps: int
    inner_model: Any


# A1111: modules/script_callbacks.py AfterCFGCallbackParams
@dataclasses.dataclass
class AfterCFGCallbackParams:
    """``x`` is read back (reassigning it is honoured)."""

    x: Any
    sampling_step: int
    total_sampling_steps: int


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


_categories = ("model_loaded", "ui_settings", "extra_noise", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg",
               "infotext_pasted", "script_unloaded", "before_ui", "app_started")
callback_map: dict[str, list[ScriptCallback]] = {f"callbacks_{c}": [] for c in _categories}


def clear_callbacks() -> None:
    """A1111 calls this before (re)loading scripts; tests call it between cases."""
    for callbacks in callback_map.values():
        callbacks.clear()


def add_callback(callbacks: list, fun, *, name=None, category='unknown', filename=None) -> None:
    if filename is None:
        outer = [f for f in inspect.stack(0) if f.filename != __file__]
        filename = outer[0].filename if outer else 'unknown file'
    base = f"base/{os.path.basename(filename)}/{category}" + (f"/{name}" if name is not None else "")
    unique, n = base, 0
    while any(c.name == unique for c in callbacks):
        n += 1
        unique = f"{base}-{n}"
    callbacks.append(ScriptCallback(filename, fun, unique))


# A1111: modules/script_callbacks.py ordered_callbacks / sort_callbacks: registration order unless an extension's
# metadata orders callbacks or the user prioritizes some in Settings (neither exists here); tests rely on a
# callback registered after RIVAL's script was loaded running after RIVAL's
def ordered_callbacks(category: str) -> list[ScriptCallback]:
    return list(callback_map[f"callbacks_{category}"])


def remove_callbacks_for_function(callback_func) -> None:
    for callbacks in callback_map.values():
        callbacks[:] = [c for c in callbacks if c.callback != callback_func]


# A1111: modules/script_callbacks.py cfg_denoiser_callback and the other dispatchers: each callback in
# try/except Exception -> report_exception (errors.report), then the next one
def _run(category: str, *args, reverse: bool = False) -> None:
    callbacks = ordered_callbacks(category)
    for c in reversed(callbacks) if reverse else callbacks:
        try:
            c.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {category}_callback for {c.script}", exc_info=True)


def model_loaded_callback(sd_model): _run("model_loaded", sd_model)
def ui_settings_callback(): _run("ui_settings")
def extra_noise_callback(params: ExtraNoiseParams): _run("extra_noise", params)
def cfg_denoiser_callback(params: CFGDenoiserParams): _run("cfg_denoiser", params)
def cfg_denoised_callback(params: CFGDenoisedParams): _run("cfg_denoised", params)
def cfg_after_cfg_callback(params: AfterCFGCallbackParams): _run("cfg_after_cfg", params)
def infotext_pasted_callback(infotext: str, params: dict[str, Any]): _run("infotext_pasted", infotext, params)
def script_unloaded_callback(): _run("script_unloaded", reverse=True)
def before_ui_callback(): _run("before_ui", reverse=True)
def app_started_callback(demo, app): _run("app_started", demo, app)


def _register(category: str):
    def on(callback, *, name=None):
        add_callback(callback_map[f"callbacks_{category}"], callback, name=name, category=category)
    on.__name__ = f"on_{category}"
    return on


on_model_loaded = _register("model_loaded")
on_ui_settings = _register("ui_settings")
on_extra_noise = _register("extra_noise")
on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_denoised = _register("cfg_denoised")
on_cfg_after_cfg = _register("cfg_after_cfg")
on_infotext_pasted = _register("infotext_pasted")
on_script_unloaded = _register("script_unloaded")
on_before_ui = _register("before_ui")
on_app_started = _register("app_started")

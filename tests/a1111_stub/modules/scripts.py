"""``Script`` base class, argument objects and a small ``ScriptRunner`` mirroring A1111 v1.10.1's dispatch.

The runner calls a callback only for AlwaysVisible scripts that override it, passes
``p.script_args[args_from:args_to]`` positionally, and swallows (logs) any Exception, like A1111.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from modules import errors

AlwaysVisible = object()

current_basedir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
"""What ``basedir()`` returns: A1111 gives the extension's folder; here the repository root (tests may set it)."""


def basedir() -> str:
    return current_basedir


class MaskBlendArgs:
    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent, self.nmask, self.init_latent, self.mask = current_latent, nmask, init_latent, mask
        self.blended_latent, self.denoiser, self.sigma = blended_latent, denoiser, sigma
        self.is_final_blend = denoiser is None


@dataclass
class PostSampleArgs:
    samples: object


@dataclass
class PostprocessImageArgs:
    image: object


@dataclass
class PostprocessBatchListArgs:
    images: list


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False
    controls = None

    def title(self): raise NotImplementedError()
    def ui(self, is_img2img): pass
    def show(self, is_img2img): return True
    def run(self, p, *args): pass
    def setup(self, p, *args): pass
    def before_process(self, p, *args): pass
    def process(self, p, *args): pass
    def before_process_batch(self, p, *args, **kwargs): pass
    def after_extra_networks_activate(self, p, *args, **kwargs): pass
    def process_before_every_sampling(self, p, *args, **kwargs): pass
    def process_batch(self, p, *args, **kwargs): pass
    def postprocess_batch(self, p, *args, **kwargs): pass
    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs): pass
    def on_mask_blend(self, p, mba: MaskBlendArgs, *args): pass
    def post_sample(self, p, ps: PostSampleArgs, *args): pass
    def postprocess_image(self, p, pp: PostprocessImageArgs, *args): pass
    def postprocess(self, p, processed, *args): pass
    def before_hr(self, p, *args): pass
    def describe(self): return ""

    def elem_id(self, item_id):
        """``script_[txt2img_|img2img_]<title>_<item_id>``; the tab part only when shown on both tabs."""
        tab = ("img2img_" if self.is_img2img else "txt2img_") if self.show(True) == self.show(False) else ""
        title = re.sub(r'[^a-z_0-9]', '', re.sub(r'\s', '_', self.title().lower()))
        return f"script_{tab}{title}_{item_id}"


# A1111: modules/scripts.py ScriptRunner.<callback> bodies: try script.<callback>(p, *script_args, ...)
# except Exception: errors.report(...) -- an Exception never leaves a script callback (a BaseException does)
def run_script_callback(script: Script, name: str, p, *args, **kwargs):
    """Call ``script.<name>(p, *args, **kwargs)``; log and swallow an Exception as ScriptRunner does."""
    try:
        return getattr(script, name)(p, *args, **kwargs)
    except Exception:
        errors.report(f"Error running {name}: {script.filename}", exc_info=True)


_PLAIN = {"before_process", "process", "before_process_batch", "after_extra_networks_activate", "process_batch",
          "process_before_every_sampling", "before_hr", "on_mask_blend", "post_sample", "postprocess_batch_list",
          "postprocess_image", "postprocess"}


class ScriptRunner:
    """The part of A1111's ScriptRunner that ``processing`` talks to, over a fixed list of scripts.

    ``runner.<callback>(p, *lead, **kwargs)`` calls ``script.<callback>(p, *lead, *its args, **kwargs)``.
    ``script_args_for(args_per_script)`` lays out ``p.script_args`` as the UI does: slot 0 is the
    selectable-script dropdown, then each script's ``args_from:args_to`` slice in order.
    """

    def __init__(self, scripts: list[Script] | tuple = (), *, is_img2img: bool = False):
        self.scripts = list(scripts)
        self.is_img2img = is_img2img
        for script in self.scripts:
            script.is_img2img, script.is_txt2img = is_img2img, not is_img2img
            script.filename = script.filename or f"{type(script).__module__}.py"
            script.alwayson = script.show(is_img2img) is AlwaysVisible
        self.alwayson_scripts = [s for s in self.scripts if s.alwayson]
        self.selectable_scripts = [s for s in self.scripts if not s.alwayson]

    def script_args_for(self, args_per_script: list[list]) -> list:
        flat: list = [0]
        for script, args in zip(self.scripts, args_per_script, strict=True):
            script.args_from = len(flat)
            flat.extend(args)
            script.args_to = len(flat)
        return flat

    def default_script_args(self) -> list:
        """What the API starts from (``init_default_script_args``): ``ui()`` values, built in a throw-away Blocks."""
        import gradio as gr

        with gr.Blocks():
            for script in self.scripts:
                script.ui(script.is_img2img)  # the API calls ui() twice: a ui() with side effects shows here
            values = [[c.value for c in script.ui(script.is_img2img) or []] for script in self.scripts]
        return self.script_args_for(values)

    def _callers(self, method_name: str) -> list[Script]:
        base = getattr(Script, method_name, None)
        return [s for s in self.alwayson_scripts if getattr(type(s), method_name, None) is not base]

    # A1111: modules/scripts.py ScriptRunner.ordered_scripts + process_before_every_sampling(p, **kwargs) etc.:
    # AlwaysVisible scripts that override the callback, args sliced from p.script_args
    def _dispatch(self, method_name: str, p, *lead, **kwargs) -> None:
        for script in self._callers(method_name):
            args = p.script_args[script.args_from:script.args_to]
            run_script_callback(script, method_name, p, *lead, *args, **kwargs)

    def __getattr__(self, name):
        if name in _PLAIN:
            return lambda p, *lead, **kwargs: self._dispatch(name, p, *lead, **kwargs)
        raise AttributeError(name)

    # A1111: modules/scripts.py ScriptRunner.setup_scrips (setup_for_ui_only skipped for the API)
    def setup_scrips(self, p, *, is_ui=True):  # (sic) A1111's name
        for script in self._callers("setup"):
            if is_ui or not script.setup_for_ui_only:
                run_script_callback(script, "setup", p, *p.script_args[script.args_from:script.args_to])

    def postprocess_batch(self, p, images, **kwargs):
        self._dispatch("postprocess_batch", p, images=images, **kwargs)

"""Driving the real extension script through a stub WebUI, as the WebUI would.

The stub is chosen by the environment variable ``RIVAL_STUB``: ``a1111`` (default; tests/a1111_stub, A1111
v1.10.1), ``forge`` (tests/forge_stub over the A1111 stub: Forge's ``backend`` and the modules Forge changed) or
``reforge`` (the same with the ComfyUI-style patcher of reForge and Forge Classic: no ``backend``, no
``cond_indices``). One stub per Python process: ``tests/run_tests.sh`` runs the host-neutral test modules once per
stub.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STUB = os.environ.get("RIVAL_STUB", "a1111")
if STUB not in ("a1111", "forge", "reforge"):
    raise RuntimeError(f"RIVAL_STUB must be a1111, forge or reforge, got {STUB!r}")
FORGE = STUB in ("forge", "reforge")
sys.path.insert(0, str(ROOT / "tests" / "a1111_stub"))
if FORGE:
    sys.path.insert(0, str(ROOT / "tests" / "forge_stub"))
    if STUB == "reforge":
        import reforge_flavour  # noqa: F401 (the patcher family: hides Forge2's backend)

import fake_model  # noqa: E402
from modules import processing, script_callbacks, scripts  # noqa: E402
from modules.api import api  # noqa: E402

from rival_ext.forge.patches import Patch  # noqa: E402
from rival_ext.job import CHAINS  # noqa: E402

if FORGE:
    import forge_model


def reference_image() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.chelsea())


def install_model(seed: int = 0, dtype: torch.dtype = torch.float32):
    """The stub's fake model as ``shared.sd_model``."""
    return (forge_model if FORGE else fake_model).install(seed=seed, dtype=dtype)


def stub_environment(dtype: torch.dtype = torch.float32):
    """Fresh WebUI state, the fake model loaded (in ``dtype``), and the extension's script module imported."""
    fake_model.reset_a1111_state()
    model = install_model(dtype=dtype)
    CHAINS.clear()
    spec = importlib.util.spec_from_file_location("rival_script", ROOT / "scripts" / "rival.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return model, module


def unet_of(model) -> torch.nn.Module:
    """The UNet module of the loaded model (A1111: ``model.model.diffusion_model``; Forge: the patcher's)."""
    if FORGE:
        return model.forge_objects_after_applying_lora.unet.model.diffusion_model
    return model.model.diffusion_model


def rival_patches(patcher) -> int:
    """RIVAL's live patches in a Forge UNet patcher's options (its wrapper, attn1 patches). A patch of a closed
    pass is inert; it stays only on a clone another extension made of RIVAL's (Forge drops it before sampling)."""
    options = patcher.model_options
    patches = options.get("transformer_options", {}).get("patches", {})
    found = [p for listed in patches.values() for p in listed] + [options.get("model_function_wrapper")]
    return sum(isinstance(p, Patch) and not p.function.__self__.closed for p in found)


def hook_count(model) -> int:
    """What RIVAL could have left on the model: module hooks on the UNet, and in Forge RIVAL's patches on the
    patchers the next generation starts from (the loaded one and the one after LoRAs)."""
    count = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet_of(model).modules())
    if FORGE:
        count += rival_patches(model.forge_objects.unet) + rival_patches(model.forge_objects_after_applying_lora.unet)
    return count


class FinalLatent(scripts.Script):
    """Keeps the latent that leaves ``post_sample`` (after RIVAL's, which runs first), i.e. what the WebUI decodes."""

    samples = None

    def title(self):
        return "final latent"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def post_sample(self, p, ps, *args):
        self.samples = ps.samples.clone()


def generate(module, rival: dict | None, before=(), after=(), **settings) -> tuple[object, torch.Tensor]:
    """txt2img with other extensions' scripts before and after RIVAL's (script order = callback order): the result
    and the final latent (the tiny test UNet's attention moves latents more than 8-bit pixels)."""
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a cat", negative_prompt="ugly", steps=settings.pop("steps", 6), width=64, height=64,
        seed=settings.pop("seed", 3), sampler_name=settings.pop("sampler_name", "Euler"), cfg_scale=5, **settings)
    final = FinalLatent()
    runner = scripts.ScriptRunner([*before, module.RivalScript(), *after, final])
    p.scripts = runner
    p.is_api = True
    p.script_args = api.init_script_args(runner, {"RIVAL": {"args": [rival or {"enabled": False}]}})
    return processing.process_images(p), final.samples


def difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the latent's scale. RIVAL's attention moves this tiny UNet's final latent by
    about 4e-4 (AdaIN off); the same computation batched differently by about 3e-6."""
    return float((a - b).abs().max()) / float(a.abs().max())


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return difference(a, b) < 2e-5


def apart(a: torch.Tensor, b: torch.Tensor) -> bool:
    return difference(a, b) > 1e-4


def callback_count() -> int:
    return sum(len(script_callbacks.ordered_callbacks(c)) for c in ("cfg_denoiser", "cfg_after_cfg"))


def txt2img(module, rival: dict | list | None, **settings) -> tuple[object, object]:
    """Run a txt2img with the RIVAL script attached (``rival`` None: extension absent)."""
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt=settings.pop("prompt", "a cat"), negative_prompt=settings.pop("negative_prompt", "ugly"),
        steps=settings.pop("steps", 6), width=settings.pop("width", 64), height=settings.pop("height", 64),
        seed=settings.pop("seed", 3),
        sampler_name=settings.pop("sampler_name", "Euler"), cfg_scale=5, **settings,
    )
    if rival is not None:
        attach(p, scripts.ScriptRunner([module.RivalScript()]), rival)
    return p, processing.process_images(p)


def attach(p, runner, rival: dict | list) -> None:
    """The panel's positional list as the UI sends it, or a dict as an API request (padded as A1111 does)."""
    p.scripts = runner
    if isinstance(rival, dict):
        p.is_api = True
        p.script_args = api.init_script_args(runner, {"RIVAL": {"args": [rival]}})
    else:
        p.script_args = runner.script_args_for([rival])


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index]).astype(np.int16)


def enabled(**values) -> dict:
    return {"enabled": True, "reference_image": reference_image(), **values}


def img2img(module, rival, mask=None, image=None, **settings):
    image = reference_image().resize((64, 64)) if image is None else image
    p = processing.StableDiffusionProcessingImg2Img(
        prompt="a cat", negative_prompt="", steps=6, width=64, height=64, seed=3,
        sampler_name=settings.pop("sampler_name", "Euler"),
        cfg_scale=5, init_images=[image], denoising_strength=settings.pop("denoising_strength", 0.75),
        mask=mask, inpaint_full_res=settings.pop("inpaint_full_res", False), inpainting_fill=1, **settings,
    )
    torch.manual_seed(0)  # the WebUI encodes the init image with a posterior sample from the global RNG
    if rival is not None:
        attach(p, scripts.ScriptRunner([module.RivalScript()], is_img2img=True), rival)
    return p, processing.process_images(p)

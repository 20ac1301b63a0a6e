"""What every WebUI of the A1111 family shares about a pass: its samplers' levels and the pass request.

A1111 v1.10, Forge, Forge Neo, reForge and Forge Classic keep A1111's processing objects (``p``) and
sampler classes: k-diffusion samplers expose ``get_sigmas(p, steps)``, the DDIM/PLMS/UniPC family
``get_timesteps(p, steps)``, img2img and the hires pass run ``setup_img2img_steps``, and
``p.sampler_noise_scheduler_override`` replaces a k-diffusion schedule. The host adapters build on
these; ``pass_request`` describes the pass to the job.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor

from ..hooks import swap_attribute
from ..host import PassLevels, PassRequest, UnsupportedModel
from ..noise import DiscreteSchedule
from .objects import Processing, has_sigmas, has_timesteps


def pass_levels(p: Processing, schedule: DiscreteSchedule, txt2img: bool, hires: bool) -> PassLevels:
    """The sigmas the sampler will visit in this pass, ending at the chain's origin."""
    from modules import sd_samplers_common

    sampler = p.sampler
    if hires:
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, p.hr_second_pass_steps or p.steps)
    elif not txt2img:
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p)
    else:
        steps, t_enc = p.steps, None
    if has_sigmas(sampler):
        full = torch.as_tensor(sampler.get_sigmas(p, steps), dtype=torch.float64).cpu()
        official = schedule.official_end(full)
        sigmas = full if official is None else official
        if t_enc is not None:
            sigmas = sigmas[steps - t_enc - 1 :]
        return PassLevels(sigmas, timesteps=False, txt2img=txt2img, sampler_sigmas=official)
    if has_timesteps(sampler):
        ts = torch.as_tensor(sampler.get_timesteps(p, steps)).long().cpu()
        if t_enc is not None:
            ts = ts[: t_enc + 1]
        sigmas = torch.cat([schedule.sigmas[ts.flip(0)], schedule.sigmas[:1]])
        return PassLevels(sigmas, timesteps=True, txt2img=txt2img)
    raise UnsupportedModel(f"the sampler {type(sampler).__name__} has no noise schedule RIVAL can read")


def override_schedule(p: Processing, sigmas: Tensor) -> Callable[[], None]:
    """The pass's k-diffusion sampler takes ``sigmas`` (``get_sigmas`` reads the override); returns the undo."""
    schedule = sigmas.float()
    return swap_attribute(p, "sampler_noise_scheduler_override", lambda _steps: schedule)


def pass_request(p: Processing, x: Tensor, noise: Tensor) -> PassRequest:
    """The pass about to sample (``process_before_every_sampling``'s ``p``, ``x`` and ``noise``)."""
    batch, _, h, w = x.shape
    hires = bool(getattr(p, "is_hr_pass", False))
    seeds = list(getattr(p, "seeds", None) or [0] * batch)[:batch]
    nmask = getattr(p, "nmask", None)
    masked = getattr(p, "image_mask", None) is not None and nmask is not None
    regenerate = None
    if masked and nmask is not None:
        regenerate = (nmask[0] if nmask.dim() == 3 else nmask.reshape(-1, *nmask.shape[-2:])[0]) >= 0.5
    init_latent = getattr(p, "init_latent", None)
    return PassRequest(
        prompt=current_prompt(p),
        seeds=seeds,
        width=w * 8,
        height=h * 8,
        txt2img=x is noise,
        hires=hires,
        init_image=None if hires else encoded_init_image(p),
        init_latent=None if hires or not isinstance(init_latent, Tensor) else init_latent,
        regenerate=regenerate,
        masked=masked,
    )


def current_prompt(p: Processing) -> str:
    """The batch's first prompt, with extra-network tags already stripped by the WebUI."""
    prompts = getattr(p, "prompts", None) or getattr(p, "all_prompts", None)
    return prompts[0] if prompts else getattr(p, "prompt", "")


def encoded_init_image(p: Processing) -> Image.Image | None:
    """img2img's first init image as the WebUI encodes it: flattened, resized by its resize mode, or the
    "Only masked" crop resized to the generation size (``StableDiffusionProcessingImg2Img.init``)."""
    images_in = getattr(p, "init_images", None)
    if not images_in:
        return None
    from modules import images, shared

    image = images.flatten(images_in[0], shared.opts.img2img_background_color)
    paste_to = getattr(p, "paste_to", None)
    if getattr(p, "inpaint_full_res", False) and paste_to is not None:
        x1, y1, w, h = paste_to
        return images.resize_image(2, image.crop((x1, y1, x1 + w, y1 + h)), p.width, p.height)
    mode = getattr(p, "resize_mode", 0)
    return images.resize_image(0 if mode == 3 else mode, image, p.width, p.height)  # 3: the latent is resized

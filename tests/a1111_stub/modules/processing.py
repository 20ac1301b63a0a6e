"""Miniature of A1111 v1.10.1's processing: the ``p`` classes and ``process_images`` with the real order of
script callbacks, sampler creation, noise, conditioning, decoding and error/interrupt behaviour.

Left out: styles, face restoration, saving, grids, colour correction, overlays, refiner, token merging,
hires with a non-latent upscaler, inpaint "fill", pasting an "Only masked" result back, and mask blur (the
latent mask is rounded, so blur hardly changes it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from modules import (
    devices,
    extra_networks,
    images,
    infotext_utils,
    masking,
    prompt_parser,
    rng,
    scripts,
    sd_samplers,
    sd_samplers_common,
    shared,
)
from modules.sd_samplers_common import approximation_indexes, decode_first_stage, images_tensor_to_samples
from modules.shared import opts, state

opt_C = 4
opt_f = 8


# A1111: modules/processing.py get_fixed_seed
def get_fixed_seed(seed) -> int:
    if seed == '' or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except Exception:
            seed = -1
    return int(random.randrange(4294967294)) if seed == -1 else seed


# A1111: modules/processing.py create_binary_mask
def create_binary_mask(image, round=True):
    """An RGBA mask uses its alpha channel (thresholded at 128 when rounding); anything else becomes L."""
    if image.mode == 'RGBA' and image.getextrema()[-1] != (255, 255):
        image = image.split()[-1].convert("L")
        return image.point(lambda v: 255 if v > 128 else 0) if round else image
    return image.convert('L')


# A1111: modules/processing.py txt2img_image_conditioning (the non-inpainting branch: zeros (B, 5, 1, 1))
def txt2img_image_conditioning(sd_model, x, width, height):
    """Plain (non-inpainting) models get a dummy zero (B, 5, 1, 1) image conditioning."""
    return x.new_zeros(x.shape[0], 5, 1, 1, dtype=x.dtype, device=x.device)


# A1111: modules/processing.py create_random_tensors (a one-shot rng.ImageRNG; seed resize left out)
def create_random_tensors(shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0,
                          seed_resize_from_w=0, p=None):
    return rng.ImageRNG(shape, seeds, subseeds=subseeds, subseed_strength=subseed_strength).next()


class DecodedSamples(list):
    already_decoded = True


# A1111: modules/processing.py decode_latent_batch: one image at a time, returned as a DecodedSamples list
def decode_latent_batch(model, batch, target_device=None, check_for_nans=False) -> DecodedSamples:
    samples = DecodedSamples()
    for i in range(batch.shape[0]):
        sample = decode_first_stage(model, batch[i:i + 1])[0]
        samples.append(sample.to(target_device) if target_device is not None else sample)
    return samples


@dataclass(repr=False)
class StableDiffusionProcessing:
    """The fields an extension reads; constructor keywords as in A1111 (unused ones are left out)."""

    sd_model: object = None
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    extra_generation_params: dict[str, Any] = None
    overlay_images: list = None
    eta: float = None
    denoising_strength: float = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False

    scripts_value: scripts.ScriptRunner = field(default=None, init=False)
    script_args_value: list = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)
    comments: dict = field(default=None, init=False)
    sampler: sd_samplers_common.Sampler | None = field(default=None, init=False)
    is_hr_pass: bool = field(default=False, init=False)
    c: tuple = field(default=None, init=False)
    uc: tuple = field(default=None, init=False)
    rng: rng.ImageRNG | None = field(default=None, init=False)
    step_multiplier: int = field(default=1, init=False)
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    main_prompt: str = field(default=None, init=False)
    main_negative_prompt: str = field(default=None, init=False)
    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)
    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    is_api: bool = field(default=False, init=False)

    def __post_init__(self):
        self.comments = {}
        self.styles = self.styles or []
        self.sampler_noise_scheduler_override = None
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or {}
        self.refiner_checkpoint_info = None

    # A1111: modules/processing.py StableDiffusionProcessing.sd_model (property: shared.sd_model; setter ignored)
    @property
    def sd_model(self):  # noqa: F811 (A1111 also shadows the field with this property)
        """Always ``shared.sd_model``; assigning is ignored (as in A1111)."""
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    # A1111: modules/processing.py StableDiffusionProcessing.scripts / script_args setters -> setup_scripts:
    # scripts.setup_scrips(p, is_ui=not p.is_api) once both are set
    def setup_scripts(self):
        """Runs the scripts' ``setup()`` once both ``scripts`` and ``script_args`` are set."""
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def comment(self, text):
        self.comments[text] = 1

    def txt2img_image_conditioning(self, x, width=None, height=None):
        return txt2img_image_conditioning(self.sd_model, x, width or self.width, height or self.height)

    def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError()

    def close(self):
        self.sampler = None
        self.c = None
        self.uc = None

    # A1111: modules/processing.py StableDiffusionProcessing.fill_fields_from_opts
    def fill_fields_from_opts(self):
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond
        self.s_churn = self.s_churn if self.s_churn is not None else opts.s_churn
        self.s_tmin = self.s_tmin if self.s_tmin is not None else opts.s_tmin
        self.s_tmax = (self.s_tmax if self.s_tmax is not None else opts.s_tmax) or float('inf')
        self.s_noise = self.s_noise if self.s_noise is not None else opts.s_noise

    # A1111: modules/processing.py StableDiffusionProcessing.setup_prompts
    def setup_prompts(self):
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        if len(self.all_prompts) != len(self.all_negative_prompts):
            raise RuntimeError(f"Received a different number of prompts ({len(self.all_prompts)}) and negative "
                               f"prompts ({len(self.all_negative_prompts)})")
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def _conds(self, prompts, negative_prompts, steps):
        c = prompt_parser.SdConditioning(prompts, width=self.width, height=self.height)
        uc = prompt_parser.SdConditioning(negative_prompts, width=self.width, height=self.height,
                                          is_negative_prompt=True)
        with devices.autocast():
            return (prompt_parser.get_multicond_learned_conditioning(shared.sd_model, c, steps),
                    prompt_parser.get_learned_conditioning(shared.sd_model, uc, steps))

    # A1111: modules/processing.py StableDiffusionProcessing.setup_conds: total steps from the sampler config
    # (second-order samplers x2), step_multiplier, firstpass_steps; c multicond, uc plain (get_conds_with_caching)
    def setup_conds(self):
        config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = config.total_steps(self.steps) if config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps
        self.c, self.uc = self._conds(self.prompts, self.negative_prompts, total_steps)

    def get_conds(self):
        return self.c, self.uc

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list, seed=-1, info="", subseed=None, all_prompts=None,
                 all_negative_prompts=None, all_seeds=None, all_subseeds=None, index_of_first_image=0,
                 infotexts=None, comments=""):
        self.images, self.seed, self.subseed, self.info = images_list, seed, subseed, info
        self.prompt = p.prompt if not isinstance(p.prompt, list) else p.prompt[0]
        self.negative_prompt = p.negative_prompt if not isinstance(p.negative_prompt, list) else p.negative_prompt[0]
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width, self.height, self.sampler_name, self.cfg_scale = p.width, p.height, p.sampler_name, p.cfg_scale
        self.steps, self.batch_size, self.denoising_strength = p.steps, p.batch_size, p.denoising_strength
        self.extra_generation_params, self.index_of_first_image = p.extra_generation_params, index_of_first_image
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)

    def infotext(self, p: StableDiffusionProcessing, index):
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                               position_in_batch=index % self.batch_size, iteration=index // self.batch_size)


# A1111: modules/processing.py create_infotext
def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    """A1111's infotext with a reduced set of base keys; extra_generation_params values may be str, per-image
    lists or callables ``f(**locals())`` exactly as in A1111."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    all_negative_prompts = p.all_negative_prompts if all_negative_prompts is None else all_negative_prompts
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]

    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash,
        "Model": p.sd_model_name,
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            from modules import errors
            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            generation_params[key] = None

    text = ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}"
                     for k, v in generation_params.items() if v is not None)
    negative_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_text}\n{text}".strip()


# A1111: modules/processing.py process_images: scripts.before_process, override_settings set, process_images_inner,
# opts restored in finally
def process_images(p: StableDiffusionProcessing) -> Processed:
    """before_process, then ``override_settings`` applied for the job and restored in ``finally``."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: opts.data[k] for k in p.override_settings if k in opts.data}
    try:
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
        res = process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


# A1111: modules/processing.py process_images_inner. Order relied on: scripts.process -> p.init -> per batch
# (n_iter): p.rng = ImageRNG(p.seeds) -> before_process_batch -> extra networks -> process_batch -> setup_conds ->
# p.sample (ONCE per batch; an exception propagates: no postprocess) -> post_sample -> decode -> state.nextjob ->
# postprocess_batch(_list) -> postprocess_image; after the loop, scripts.postprocess(p, res)
def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """An exception from p.init / p.sample propagates (``postprocess`` is then never called); an interrupt
    ends sampling early (the sampler returns its last latent) and ``postprocess`` still runs."""
    devices.torch_gc()
    seed, subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)
    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    p.fill_fields_from_opts()
    p.setup_prompts()
    n_all = len(p.all_prompts)
    p.all_seeds = seed if isinstance(seed, list) else [
        int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(n_all)]
    p.all_subseeds = subseed if isinstance(subseed, list) else [int(subseed) + x for x in range(n_all)]

    if p.scripts is not None:
        # A1111: process_images_inner calls scripts.process after setup_prompts and all_seeds (seed + i per image)
        p.scripts.process(p)

    infotexts, output_images = [], []
    with torch.no_grad(), p.sd_model.ema_scope():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        if state.job_count == -1:
            state.job_count = p.n_iter

        # A1111: process_images_inner 'for n in range(p.n_iter)': a skip is reset, an interrupt ends the loop
        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break

            sl = slice(n * p.batch_size, (n + 1) * p.batch_size)
            p.prompts, p.negative_prompts = p.all_prompts[sl], p.all_negative_prompts[sl]
            p.seeds, p.subseeds = p.all_seeds[sl], p.all_subseeds[sl]
            latent_channels = getattr(shared.sd_model, 'latent_channels', opt_C)
            # A1111: process_images_inner: a fresh rng.ImageRNG per batch from this batch's seeds (p.seeds)
            p.rng = rng.ImageRNG((latent_channels, p.height // opt_f, p.width // opt_f), p.seeds,
                                 subseeds=p.subseeds, subseed_strength=p.subseed_strength)

            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds,
                                               subseeds=p.subseeds)
            if len(p.prompts) == 0:
                break
            p.parse_extra_network_prompts()
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.extra_network_data)
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

            p.setup_conds()
            if p.n_iter > 1:
                state.job = f"Batch {n + 1} out of {p.n_iter}"

            with devices.autocast():
                # A1111: process_images_inner: p.sample(conditioning=p.c, unconditional_conditioning=p.uc, ...)
                samples_ddim = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds,
                                        subseeds=p.subseeds, subseed_strength=p.subseed_strength, prompts=p.prompts)

            if p.scripts is not None:
                # A1111: process_images_inner: scripts.post_sample(p, PostSampleArgs(samples)) right after p.sample
                ps = scripts.PostSampleArgs(samples_ddim)
                p.scripts.post_sample(p, ps)
                samples_ddim = ps.samples

            if getattr(samples_ddim, 'already_decoded', False):
                x_samples_ddim = samples_ddim
            else:
                devices.test_for_nans(samples_ddim, "unet")
                x_samples_ddim = decode_latent_batch(p.sd_model, samples_ddim, target_device=devices.cpu)
            x_samples_ddim = torch.clamp((torch.stack(list(x_samples_ddim)).float() + 1.0) / 2.0, 0.0, 1.0)
            del samples_ddim
            state.nextjob()

            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples_ddim, batch_number=n)
                p.prompts, p.negative_prompts = p.all_prompts[sl], p.all_negative_prompts[sl]
                batch_params = scripts.PostprocessBatchListArgs(list(x_samples_ddim))
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                x_samples_ddim = batch_params.images

            for i, x_sample in enumerate(x_samples_ddim):
                p.batch_index = i
                image = Image.fromarray((255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8))
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                text = create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i,
                                       all_negative_prompts=p.negative_prompts)
                infotexts.append(text)
                if opts.enable_pnginfo:
                    image.info["parameters"] = text
                output_images.append(image)

        if not infotexts:
            infotexts.append(Processed(p, []).infotext(p, 0))

    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)

    res = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0],
                    subseed=p.all_subseeds[0], index_of_first_image=0, infotexts=infotexts)
    if p.scripts is not None:
        # A1111: process_images_inner ends with scripts.postprocess(p, res) (not reached when p.sample raised)
        p.scripts.postprocess(p, res)
    return res


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ''
    hr_negative_prompt: str = ''

    hr_upscale_to_x: int = field(default=0, init=False)
    hr_upscale_to_y: int = field(default=0, init=False)
    latent_scale_mode: dict = field(default=None, init=False)
    hr_c: tuple | None = field(default=None, init=False)
    hr_uc: tuple | None = field(default=None, init=False)
    hr_extra_network_data: list = field(default=None, init=False)

    # A1111: modules/processing.py StableDiffusionProcessingTxt2Img.init (hires bookkeeping) and
    # calculate_target_resolution (hr_upscale_to_x/y); only latent upscalers here
    def init(self, all_prompts, all_seeds, all_subseeds):
        """Hires bookkeeping only (the first-pass sampler is created in ``sample``)."""
        if not self.enable_hr:
            return
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.extra_generation_params["Hires upscale"] = self.hr_scale
            self.hr_upscale_to_x, self.hr_upscale_to_y = int(self.width * self.hr_scale), int(
                self.height * self.hr_scale)
        else:
            self.extra_generation_params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
            self.hr_upscale_to_x = self.hr_resize_x or self.hr_resize_y * self.width // self.height
            self.hr_upscale_to_y = self.hr_resize_y or self.hr_resize_x * self.height // self.width
        if self.hr_second_pass_steps:
            self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps
        if self.hr_upscaler is not None:
            self.extra_generation_params["Hires upscaler"] = self.hr_upscaler
        name = self.hr_upscaler if self.hr_upscaler is not None else shared.latent_upscale_default_mode
        self.latent_scale_mode = shared.latent_upscale_modes.get(name)
        if self.latent_scale_mode is None:
            raise NotImplementedError(f"stub: hires upscaler {name!r} (only latent upscalers are available)")

    def setup_conds(self):
        super().setup_conds()
        self.hr_c = self.hr_uc = None

    # A1111: modules/processing.py StableDiffusionProcessingTxt2Img.calculate_hr_conds
    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return
        prompts = [self.hr_prompt or x for x in self.prompts]
        negative_prompts = [self.hr_negative_prompt or x for x in self.negative_prompts]
        self.hr_c, self.hr_uc = self._conds(prompts, negative_prompts, self.firstpass_steps)

    # A1111: modules/processing.py StableDiffusionProcessingTxt2Img.sample: create_sampler; x = rng.next();
    # scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
    # (x and noise are the SAME tensor); sampler.sample(...); then sample_hr_pass when enable_hr
    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                      image_conditioning=self.txt2img_image_conditioning(x))
        del x
        if not self.enable_hr:
            return samples
        self.calculate_hr_conds()
        return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)

    # A1111: modules/processing.py StableDiffusionProcessingTxt2Img.sample_hr_pass: returns at once when interrupted;
    # is_hr_pass = True; create_sampler(hr_sampler_name or sampler_name); latent upscale; state.nextjob(); a new
    # ImageRNG, noise = rng.next(); hr extra networks; calculate_hr_conds; scripts.before_hr, then
    # process_before_every_sampling(p=self, x=samples, noise=noise, c=hr_c, uc=hr_uc);
    # sampler.sample_img2img(..., steps=hr_second_pass_steps or steps); decode; is_hr_pass = False
    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        """Latent upscale, fresh noise from a new ImageRNG, before_hr, process_before_every_sampling, img2img."""
        if state.interrupted:
            return samples
        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(
            samples, size=(self.hr_upscale_to_y // opt_f, self.hr_upscale_to_x // opt_f),
            mode=self.latent_scale_mode["mode"], antialias=self.latent_scale_mode["antialias"])
        image_conditioning = self.txt2img_image_conditioning(samples)
        state.nextjob()
        self.rng = rng.ImageRNG(samples.shape[1:], self.seeds, subseeds=self.subseeds,
                                subseed_strength=self.subseed_strength)
        noise = self.rng.next()
        if not self.disable_extra_networks:
            extra_networks.activate(self, self.hr_extra_network_data)
        self.calculate_hr_conds()
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                              steps=self.hr_second_pass_steps or self.steps,
                                              image_conditioning=image_conditioning)
        self.sampler = None
        decoded_samples = decode_latent_batch(self.sd_model, samples, target_device=devices.cpu)
        self.is_hr_pass = False
        return decoded_samples

    def close(self):
        super().close()
        self.hr_c = self.hr_uc = None


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True  # the API's default is "Only masked" too
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Image.Image = None
    paste_to: tuple = None

    image_mask: Any = field(default=None, init=False)
    nmask: torch.Tensor = field(default=None, init=False)
    image_conditioning: torch.Tensor = field(default=None, init=False)
    mask_for_overlay: Image.Image = field(default=None, init=False)
    init_latent: torch.Tensor = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        self.image_mask = self.mask  # the constructor's ``mask`` is the PIL mask; ``mask`` becomes the latent mask
        self.mask = None
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = opts.initial_noise_multiplier

    # A1111: modules/processing.py StableDiffusionProcessingImg2Img.init (mask blur, 'fill', overlays and colour
    # correction left out): create_sampler here, init images -> init_latent, mask -> mask/nmask
    def init(self, all_prompts, all_seeds, all_subseeds):
        """Creates the sampler, encodes the init images to ``init_latent`` and builds ``mask``/``nmask``
        (C x h x w; ``mask`` = 1 keeps the original, ``nmask`` = 1 is regenerated)."""
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.image_cfg_scale = None
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)

        image_mask = self.image_mask
        crop_region = None
        if image_mask is not None:
            image_mask = create_binary_mask(image_mask, round=self.mask_round)
            if self.inpainting_mask_invert:
                image_mask = ImageOps.invert(image_mask)
                self.extra_generation_params["Mask mode"] = "Inpaint not masked"
            if self.inpainting_fill == 0:
                raise NotImplementedError("stub: masked content 'fill' (use inpainting_fill 1, 2 or 3)")
            # A1111: StableDiffusionProcessingImg2Img.init, inpaint_full_res branch: masking.get_crop_region_v2(mask,
            # padding), masking.expand_crop_region to width:height, mask and images cropped and resized (resize mode 2)
            # to width x height,
            # paste_to = (x1, y1, w, h); a blank mask falls back to plain img2img
            if self.inpaint_full_res:  # "Only masked": the mask's box, grown to the generation's aspect ratio
                self.mask_for_overlay = image_mask
                crop_region = masking.get_crop_region_v2(image_mask, self.inpaint_full_res_padding)
                if crop_region:
                    crop_region = masking.expand_crop_region(crop_region, self.width, self.height,
                                                             image_mask.width, image_mask.height)
                    x1, y1, x2, y2 = crop_region
                    image_mask = images.resize_image(2, image_mask.crop(crop_region), self.width, self.height)
                    self.paste_to = (x1, y1, x2 - x1, y2 - y1)
                    self.extra_generation_params["Inpaint area"] = "Only masked"
                else:  # a blank mask: plain img2img
                    image_mask = self.mask_for_overlay = None
                    self.inpaint_full_res = False
            else:
                image_mask = images.resize_image(self.resize_mode, image_mask, self.width, self.height)
                np_mask = np.clip(np.array(image_mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
                self.mask_for_overlay = Image.fromarray(np_mask)
            self.overlay_images = []
        latent_mask = self.latent_mask if self.latent_mask is not None else image_mask

        imgs = []
        for img in self.init_images:
            image = images.flatten(img, opts.img2img_background_color)
            if crop_region is None and self.resize_mode != 3:
                image = images.resize_image(self.resize_mode, image, self.width, self.height)
            if crop_region is not None:
                image = images.resize_image(2, image.crop(crop_region), self.width, self.height)
            imgs.append(np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0))
        if len(imgs) == 1:
            batch_images = np.expand_dims(imgs[0], axis=0).repeat(self.batch_size, axis=0)
        elif len(imgs) <= self.batch_size:
            self.batch_size = len(imgs)
            batch_images = np.array(imgs)
        else:
            raise RuntimeError(f"bad number of images passed: {len(imgs)}; expecting {self.batch_size} or less")

        image = torch.from_numpy(batch_images).to(shared.device, dtype=devices.dtype_vae)
        # A1111: StableDiffusionProcessingImg2Img.init: init_latent = sd_samplers_common.images_tensor_to_samples(...)
        self.init_latent = images_tensor_to_samples(image, approximation_indexes.get(opts.sd_vae_encode_method),
                                                    self.sd_model)
        if self.resize_mode == 3:
            self.init_latent = torch.nn.functional.interpolate(
                self.init_latent, size=(self.height // opt_f, self.width // opt_f), mode="bilinear")

        # A1111: StableDiffusionProcessingImg2Img.init: latmask = latent_mask resized to the latent grid (rounded when
        # mask_round), tiled over C; mask = 1 - latmask (keep), nmask = latmask (regenerate)
        if image_mask is not None:
            h, w = self.init_latent.shape[2:]
            latmask = np.array(latent_mask.convert('RGB').resize((w, h)), dtype=np.float32)[..., 0] / 255
            if self.mask_round:
                latmask = np.around(latmask)
            latmask = np.tile(latmask[None], (self.init_latent.shape[1], 1, 1))
            self.mask = torch.asarray(1.0 - latmask).to(shared.device).type(devices.dtype)
            self.nmask = torch.asarray(latmask).to(shared.device).type(devices.dtype)
            if self.inpainting_fill == 2:
                noise = create_random_tensors(self.init_latent.shape[1:], all_seeds[0:self.init_latent.shape[0]])
                self.init_latent = self.init_latent * self.mask + noise * self.nmask
                self.extra_generation_params["Masked content"] = 'latent noise'
            elif self.inpainting_fill == 3:
                self.init_latent = self.init_latent * self.mask
                self.extra_generation_params["Masked content"] = 'latent nothing'

        self.image_conditioning = self.img2img_image_conditioning(image * 2 - 1, self.init_latent, image_mask,
                                                                  self.mask_round)

    # A1111: modules/processing.py StableDiffusionProcessingImg2Img.sample: x = rng.next() (* initial_noise_multiplier);
    # process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=..., uc=...);
    # sampler.sample_img2img(p, init_latent, x, ...); final blend samples*nmask + init_latent*mask via on_mask_blend
    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                              image_conditioning=self.image_conditioning)
        if self.mask is not None:
            blended = samples * self.nmask + self.init_latent * self.mask
            if self.scripts is not None:
                mba = scripts.MaskBlendArgs(samples, self.nmask, self.init_latent, self.mask, blended)
                self.scripts.on_mask_blend(self, mba)
                blended = mba.blended_latent
            samples = blended
        return samples

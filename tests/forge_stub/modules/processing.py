"""Forge: modules/processing.py: A1111's processing, with Forge's sampling entry points.

Relied on (Forge main): before every sampling ``sd_model.forge_objects`` is reset to a shallow copy of
``forge_objects_after_applying_lora`` (so patches on a clone are dropped after the pass);
``process_before_every_sampling`` runs after that reset, except in the hires pass, where it runs once before the
reset (those patches are thrown away) and once after; ``p.modified_noise``, when a script set it, replaces the
sampler's noise (``x`` in txt2img, ``noise`` in img2img and the hires pass) and is cleared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modules import a1111_module, devices, extra_networks, rng, sd_samplers
from modules.shared import state

_a1111 = a1111_module("processing")
globals().update({name: value for name, value in vars(_a1111).items() if not name.startswith("__")})


def reset_forge_objects(sd_model) -> None:
    sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()


def take_modified_noise(p, default):
    noise = default if p.modified_noise is None else p.modified_noise
    p.modified_noise = None
    return noise


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(_a1111.StableDiffusionProcessingTxt2Img):
    modified_noise: torch.Tensor | None = field(default=None, init=False)

    # Forge: StableDiffusionProcessingTxt2Img.sample
    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        reset_forge_objects(self.sd_model)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        x = take_modified_noise(self, x)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                      image_conditioning=self.txt2img_image_conditioning(x))
        del x
        if not self.enable_hr:
            return samples
        self.calculate_hr_conds()
        return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)

    # Forge: StableDiffusionProcessingTxt2Img.sample_hr_pass (latent upscale only)
    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        if state.interrupted:
            return samples
        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(
            samples, size=(self.hr_upscale_to_y // _a1111.opt_f, self.hr_upscale_to_x // _a1111.opt_f),
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
        reset_forge_objects(self.sd_model)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        noise = take_modified_noise(self, noise)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                              steps=self.hr_second_pass_steps or self.steps,
                                              image_conditioning=image_conditioning)
        self.sampler = None
        decoded_samples = _a1111.decode_latent_batch(self.sd_model, samples, target_device=devices.cpu)
        self.is_hr_pass = False
        return decoded_samples


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(_a1111.StableDiffusionProcessingImg2Img):
    modified_noise: torch.Tensor | None = field(default=None, init=False)

    # Forge: StableDiffusionProcessingImg2Img.sample
    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier
        reset_forge_objects(self.sd_model)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        x = take_modified_noise(self, x)
        samples = self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                              image_conditioning=self.image_conditioning)
        if self.mask is not None:
            blended = samples * self.nmask + self.init_latent * self.mask
            if self.scripts is not None:
                mba = _a1111.scripts.MaskBlendArgs(samples, self.nmask, self.init_latent, self.mask, blended)
                self.scripts.on_mask_blend(self, mba)
                blended = mba.blended_latent
            samples = blended
        return samples



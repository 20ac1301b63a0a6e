"""Miniature of A1111 v1.10.1's ``CFGDenoiser``: same batch layout, callbacks, call pattern and combination.

Rows given to the inner model: for each image i its cond rows (one per AND sub-prompt, in order), then
the B uncond rows. Left out: refiner switching, edit (ip2p) / unCLIP models, SDXL dict conds, pad v0.
"""

from __future__ import annotations

import torch

from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoisedParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoised_callback,
    cfg_denoiser_callback,
)
from modules.shared import opts, state


# A1111: modules/sd_samplers_cfg_denoiser.py pad_cond (tensor form; the SDXL dict form is left out)
def pad_cond(tensor, repeats, empty):
    return torch.cat([tensor, empty.repeat((tensor.shape[0], repeats, 1))], dim=1)


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        """expected model evaluations (sampler config), set by launch_sampling"""
        self.step = 0
        """model evaluations done so far in this sampling run"""
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.p = None
        self.cond_scale_miltiplier = 1.0  # (sic) A1111's spelling
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.mask_before_denoising = False

    @property
    def inner_model(self):
        raise NotImplementedError()

    # A1111: modules/sd_samplers_cfg_denoiser.py CFGDenoiser.combine_denoised: uncond = the last B rows;
    # denoised[i] += (cond_row - uncond[i]) * weight * cond_scale for each AND sub-prompt
    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    # A1111: CFGDenoiser.pad_cond_uncond: the shorter of cond/uncond padded with empty-prompt chunks
    def pad_cond_uncond(self, cond, uncond):
        empty = shared.sd_model.cond_stage_model_empty_prompt
        num_repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
        if num_repeats < 0:
            cond = pad_cond(cond, -num_repeats, empty)
            self.padded_cond_uncond = True
        elif num_repeats > 0:
            uncond = pad_cond(uncond, num_repeats, empty)
            self.padded_cond_uncond = True
        return cond, uncond

    # A1111: CFGDenoiser.forward's inner apply_blend: scripts.on_mask_blend with denoiser=self, sigma=sigma
    def apply_blend(self, current_latent, sigma=None):
        blended = current_latent * self.nmask + self.init_latent * self.mask
        if self.p.scripts is not None:
            from modules import scripts
            mba = scripts.MaskBlendArgs(current_latent, self.nmask, self.init_latent, self.mask, blended,
                                        denoiser=self, sigma=sigma)
            self.p.scripts.on_mask_blend(self.p, mba)
            blended = mba.blended_latent
        return blended

    # A1111: modules/sd_samplers_cfg_denoiser.py CFGDenoiser.forward (refiner switch via apply_refiner, edit models,
    # unCLIP and pad v0 left out). Relied on: an interrupt/skip raises InterruptedException first; rows are each
    # image's cond rows in order (one per AND sub-prompt), then the B uncond rows; CFGDenoiserParams(x_in,
    # image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, text_cond, text_uncond, self) and
    # x/image_cond/sigma/text_cond/text_uncond read back; skip_uncond decided AFTER the callback
    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)

        # A1111: mask_before_denoising (timestep samplers) blends x before the model, k-diffusion after
        if self.mask_before_denoising and self.mask is not None:
            x = self.apply_blend(x, sigma)

        batch_size = len(conds_list)
        repeats = [len(conds) for conds in conds_list]

        def make_condition_dict(c_crossattn, c_concat):
            return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

        def cond_rows(t):
            return [t[i:i + 1].expand(n, *t.shape[1:]) for i, n in enumerate(repeats)]

        x_in = torch.cat([*cond_rows(x), x])
        sigma_in = torch.cat([*cond_rows(sigma), sigma])
        image_cond_in = torch.cat([*cond_rows(image_cond), image_cond])

        params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor,
                                   uncond, self)
        cfg_denoiser_callback(params)
        x_in, image_cond_in, sigma_in = params.x, params.image_cond, params.sigma
        tensor, uncond = params.text_cond, params.text_uncond

        # A1111: CFGDenoiser.forward skip-uncond paths: skip_early_cond (step / total_steps), NGMS s_min_uncond on odd
        # steps (every step with s_min_uncond_all); the uncond rows of x_in/sigma_in are dropped
        skip_uncond = False
        if opts.skip_early_cond != 0. and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            if opts.s_min_uncond_all:
                self.p.extra_generation_params["NGMS all steps"] = opts.s_min_uncond_all
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]

        # A1111: CFGDenoiser.forward: pad_cond_uncond only when the option is on and token counts differ
        self.padded_cond_uncond = False
        if opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond(tensor, uncond)

        # A1111: CFGDenoiser.forward: equal token counts: batch_cond_uncond -> one call over all rows, else chunks of B
        # rows from row 0 (subscript_cond); other token counts: cond rows in chunks of 2B (batch_cond_uncond)
        # or B, then the uncond rows in one call
        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else torch.cat([tensor, uncond])
            if opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond=make_condition_dict(cond_in, image_cond_in))
            else:
                # chunks of B rows from row 0 up; a chunk may straddle the cond/uncond boundary
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b],
                                                  cond=make_condition_dict(cond_in[a:b], image_cond_in[a:b]))
        else:
            # token counts differ: cond rows (in chunks), then one separate call for the uncond rows
            x_out = torch.zeros_like(x_in)
            chunk = batch_size * 2 if opts.batch_cond_uncond else batch_size
            for a in range(0, tensor.shape[0], chunk):
                b = min(a + chunk, tensor.shape[0])
                x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b],
                                              cond=make_condition_dict(tensor[a:b], image_cond_in[a:b]))
            if not skip_uncond:
                n = uncond.shape[0]
                x_out[-n:] = self.inner_model(x_in[-n:], sigma_in[-n:],
                                              cond=make_condition_dict(uncond, image_cond_in[-n:]))

        # A1111: CFGDenoiser.forward: skipped uncond outputs = each image's first cond output, combined at scale 1
        first_cond_rows = [conds[0][0] for conds in conds_list]
        if skip_uncond:
            # the skipped uncond outputs are stood in for by each image's first cond output (combined at scale 1)
            x_out = torch.cat([x_out, *[x_out[i:i + 1] for i in first_cond_rows]])

        # A1111: cfg_denoised_callback(CFGDenoisedParams(x_out, sampling_step, sampling_steps, inner_model))
        cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model))

        if self.need_last_noise_uncond:
            self.last_noise_uncond = torch.clone(x_out[-uncond.shape[0]:])

        scale = 1.0 if skip_uncond else cond_scale * self.cond_scale_miltiplier
        denoised = self.combine_denoised(x_out, conds_list, uncond, scale)

        if not self.mask_before_denoising and self.mask is not None:
            denoised = self.apply_blend(denoised, sigma)

        # A1111: sampler.last_latent = get_pred_x0 of each image's first cond row; store_latent (live preview 'Prompt')
        rows = torch.tensor(first_cond_rows)
        self.sampler.last_latent = self.get_pred_x0(x_in[rows], x_out[rows], sigma)
        sd_samplers_common.store_latent(self.sampler.last_latent)

        # A1111: cfg_after_cfg_callback(AfterCFGCallbackParams(denoised, sampling_step, sampling_steps)); x read back;
        # then self.step += 1
        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        denoised = after.x

        self.step += 1
        return denoised

"""``shared.opts`` / ``state`` / ``sd_model`` / ``cmd_opts``: only the settings this stub or an extension reads.

Defaults are A1111 v1.10.1's. Tests assign ``shared.sd_model`` themselves (``fake_model.install``).
"""

from types import SimpleNamespace

from modules import devices, options, shared_state

OptionInfo = options.OptionInfo
options_section = options.options_section

cmd_opts = SimpleNamespace(
    lowvram=False, medvram=False, medvram_sdxl=False, no_half=True, no_half_vae=True, upcast_sampling=False,
    disable_console_progressbars=True, freeze_settings=False, hide_ui_dir_config=False, api=False,
)

batch_cond_uncond = True  # A1111 keeps this unused module-level flag; the real switch is opts.batch_cond_uncond
parallel_processing_allowed = True
device = devices.device
sd_model = None
loaded_hypernetworks: list = []

latent_upscale_default_mode = "Latent"
latent_upscale_modes = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
}

_defaults = {
    # optimizations / sampler parameters
    "batch_cond_uncond": True, "pad_cond_uncond": False, "pad_cond_uncond_v0": False,
    "skip_early_cond": 0.0, "s_min_uncond": 0.0, "s_min_uncond_all": False,
    "sgm_noise_multiplier": False, "img2img_extra_noise": 0.0, "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0, "eta_ancestral": 1.0, "eta_ddim": 0.0, "eta_noise_seed_delta": 0,
    "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0,
    "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0, "always_discard_next_to_last_sigma": False,
    "use_old_karras_scheduler_sigmas": False, "enable_quantization": False, "randn_source": "GPU",
    "refiner_switch_by_sample_steps": False, "CLIP_stop_at_last_layers": 1, "use_old_scheduling": False,
    # VAE / images
    "sd_vae_encode_method": "Full", "sd_vae_decode_method": "Full", "img2img_background_color": "#ffffff",
    "upscaler_for_img2img": None, "inpainting_mask_weight": 1.0, "img2img_color_correction": False,
    # infotext / API
    "infotext_skip_pasting": [], "enable_pnginfo": True, "api_enable_requests": True,
    "api_forbid_local_requests": True, "samples_format": "png", "persistent_cond_cache": True,
    "token_merging_ratio": 0.0, "token_merging_ratio_hr": 0.0, "token_merging_ratio_img2img": 0.0,
    "hypertile_enable_unet": False, "hypertile_enable_unet_secondpass": False,
    "live_previews_enable": False, "multiple_tqdm": False,
}
options_templates = {k: OptionInfo(v) for k, v in _defaults.items()}

opts = options.Options(dict(options_templates), set())
state = shared_state.State()


def reset() -> None:
    """Stub-only: restore every default and a fresh ``state`` (tests call this between cases)."""
    opts.data_labels = dict(options_templates)
    opts.data = {k: v.default for k, v in options_templates.items()}
    state.__dict__.clear()

"""RIVAL: real-world image variation by aligning the diffusion inversion chain.

The library knows nothing of A1111: ``chain`` inverts the reference, ``attention`` injects its
keys/values into self-attention, ``adain`` normalises the noise prediction, ``latent_init``
chooses where generation starts, ``sampling`` drives a whole generation. ``rival_ext.a1111``
is the only place that talks to the WebUI.
"""

from .adain import adain, adain_denoised
from .attention import AttentionPlan, SelfAttentionInjector, find_self_attention
from .batching import Reference, ReferenceRowsHook
from .chain import InversionChain, check_schedule, invert
from .conditioning import Conditioning, Role, reference_rows
from .latent_init import force_keep, initial_latents, inpaint_initial_latent, latent_mask, shuffle_latent
from .models import KDenoiser, UNetEps
from .noise import DiscreteSchedule, ve_to_vp, vp_scale, vp_to_ve
from .params import PRESETS, AttentionMode, InitLatent, ReferencePrompt, RivalParams, SwitchRule, preset
from .sampling import RivalUNet, sample_ddim, sample_euler

__all__ = [
    "PRESETS",
    "AttentionMode",
    "AttentionPlan",
    "Conditioning",
    "DiscreteSchedule",
    "InitLatent",
    "InversionChain",
    "KDenoiser",
    "Reference",
    "ReferencePrompt",
    "ReferenceRowsHook",
    "RivalParams",
    "RivalUNet",
    "Role",
    "SelfAttentionInjector",
    "SwitchRule",
    "UNetEps",
    "adain",
    "adain_denoised",
    "check_schedule",
    "find_self_attention",
    "force_keep",
    "initial_latents",
    "inpaint_initial_latent",
    "invert",
    "latent_mask",
    "preset",
    "reference_rows",
    "sample_ddim",
    "sample_euler",
    "shuffle_latent",
    "ve_to_vp",
    "vp_scale",
    "vp_to_ve",
]

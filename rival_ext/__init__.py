"""RIVAL: real-world image variation by aligning the diffusion inversion chain.

The library knows nothing of A1111: ``chain`` inverts the reference, ``attention`` injects its
keys/values into self-attention, ``session`` runs one generation's hooks and evaluations,
``adain`` normalises the noise prediction, ``latent_init`` chooses where generation starts,
``sampling`` drives a whole generation, ``host`` says what a generation needs from the program
running the model. ``rival_ext.a1111`` is the only place that talks to the WebUI. Only the
public API is re-exported here; tests of internals import them from their modules.
"""

from .adain import adain
from .attention import AttentionPlan, SelfAttentionInjector
from .chain import InversionChain, check_schedule, invert
from .conditioning import Conditioning
from .eps_models import KDenoiser, UNetEps
from .latent_init import initial_latents
from .noise import DiscreteSchedule, ve_to_vp, vp_scale, vp_to_ve
from .params import PRESETS, AttentionMode, InitLatent, ReferencePrompt, RivalParams, SwitchRule, preset
from .reference_rows import Reference
from .sampling import RivalUNet, sample_ddim, sample_euler
from .session import RivalSession

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
    "RivalParams",
    "RivalSession",
    "RivalUNet",
    "SelfAttentionInjector",
    "SwitchRule",
    "UNetEps",
    "adain",
    "check_schedule",
    "initial_latents",
    "invert",
    "preset",
    "sample_ddim",
    "sample_euler",
    "ve_to_vp",
    "vp_scale",
    "vp_to_ve",
]

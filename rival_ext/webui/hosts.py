"""Which host adapter runs the loaded model: A1111's ldm/sgm model, or a Forge fork's patcher."""

from __future__ import annotations

from typing import Any

from ..host import Host
from .objects import Processing


def host_for(sd_model: Any) -> Host[Processing]:
    """The adapter of the WebUI that loaded ``sd_model`` (the WebUI's ``shared.sd_model``, untyped there; None
    when no model is loaded).

    Every Forge fork hands an extension ``sd_model.forge_objects`` (a UNet patcher that is cloned for
    each sampling pass): Forge and Forge Neo (``backend``), reForge and Forge Classic (``ldm_patched``).
    A1111 has none and gets module hooks on its ldm/sgm UNet.
    """
    if getattr(sd_model, "forge_objects", None) is not None:
        from ..forge.host import ForgeHost

        return ForgeHost(sd_model)
    from ..a1111.model import A1111Host

    return A1111Host(sd_model)

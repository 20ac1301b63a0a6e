"""The Forge host adapter: RIVAL on a Forge fork's model through its UNet patcher (``ForgeHost``).

Forge and Forge Neo (``backend``), reForge and Forge Classic (``ldm_patched``): the patch API on the
per-sampling clone of ``forge_objects.unet`` (``patches``), never hooks on the modules.
"""

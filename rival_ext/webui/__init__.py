"""The A1111 script API that every WebUI of the family keeps (A1111, Forge, Forge Neo, reForge, Forge Classic).

The panel, its one field table, the API args, the infotext, the X/Y/Z axes, the settings page and the
script callbacks' glue are written once here; the model is reached through the host adapter of the
running WebUI (``rival_ext.a1111`` or ``rival_ext.forge``).
"""

"""Which self-attention layers RIVAL acts on: block names, and the style and layout choices per model family.

A self-attention layer is named by the UNet block it sits in and its transformer block there, as WebUIs number
them: ``input.8.0`` is ``input_blocks.8``'s first transformer block, ``middle.0.3`` the middle block's fourth,
``output.1`` every transformer block of ``output_blocks.1``. SD1.x/SD2.x have one transformer block per attention
block: ``input.1 .. input.8`` (1, 2, 4, 5, 7, 8), ``middle.0``, ``output.3 .. output.11``; SDXL has ``input.4``,
``input.5`` (2 each), ``input.7``, ``input.8``, ``middle.0``, ``output.0 .. output.2`` (10 each), ``output.3 ..
output.5`` (2 each).

``style`` and ``layout`` follow the published findings: for SDXL InstantStyle's (Wang et al. 2024: diffusers'
``up_blocks.0.attentions.1`` carries style, ``output.1`` here; ``down_blocks.2.attentions.1`` layout, ``input.8``);
for SD1.x/SD2.x Visual Style Prompting's (Jeong et al. 2024: keys and values swapped in the late decoder
self-attention only, ``output.6 .. output.11``, its two highest-resolution stages) for style, and the deepest
encoder block's second attention, ``input.8``, by analogy with InstantStyle, for layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ALL, STYLE, LAYOUT = "all", "style", "layout"
NAME = re.compile(r"^(?:(?:input|output)\.\d+(?:\.\d+)?|middle(?:\.0(?:\.\d+)?)?)$")
STYLE_LAYERS = {"sdxl": ("output.1",), "sd": tuple(f"output.{i}" for i in range(6, 12))}
LAYOUT_LAYERS = {"sdxl": ("input.8",), "sd": ("input.8",)}

BlockKey = tuple[str, int, int]  # ("input"|"middle"|"output", block, transformer block)


def layer_choice(value: object) -> str:
    """The ``layers`` value in its one form: ``all``, ``style``, ``layout`` or block names joined by ", "."""
    if isinstance(value, str):
        names = [name.strip() for name in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value):
        names = [name.strip() for name in value]
    else:
        raise ValueError(f"layers must be all, style, layout or a list of self-attention block names, got {value!r}")
    names = [name for name in dict.fromkeys(names) if name]
    if len(names) == 1 and names[0] in (ALL, STYLE, LAYOUT):
        return names[0]
    bad = [name for name in names if not NAME.match(name)]
    if not names or bad:
        raise ValueError(f"layers must be all, style, layout or self-attention block names like input.8, middle.0 "
                         f"or output.1.2; got {', '.join(map(repr, bad)) or 'nothing'}")
    return ", ".join(names)


def layer_name(key: BlockKey) -> str:
    """The full name of the layer at ``key`` (``input.8.0``)."""
    return f"{key[0]}.{key[1]}.{key[2]}"


def selected_layers(choice: str, keys: Sequence[BlockKey], is_sdxl: bool) -> frozenset[int] | None:
    """The indices (in ``keys``' order) of the layers ``choice`` selects; None: all of them.

    Raises ValueError naming a block this model does not have.
    """
    if choice == ALL:
        return None
    family = "sdxl" if is_sdxl else "sd"
    names = {STYLE: STYLE_LAYERS[family], LAYOUT: LAYOUT_LAYERS[family]}.get(choice) or choice.split(", ")
    selected: set[int] = set()
    for name in names:
        found = {i for i, key in enumerate(keys) if layer_name(key) == name or layer_name(key).startswith(name + ".")}
        if not found:
            blocks = sorted({f"{k[0]}.{k[1]}" for k in keys}, key=lambda b: (b.split(".")[0], int(b.split(".")[1])))
            raise ValueError(f"layers: this model has no self-attention block {name!r}; it has {', '.join(blocks)} "
                             f"(each with .0, .1, ... for its transformer blocks)")
        selected |= found
    return frozenset(selected)

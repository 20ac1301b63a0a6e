"""The RIVAL panel, its presets, infotext pasting and XYZ axes, on gradio 3.41 (A1111, reForge, Forge Classic)
and gradio 4.40 (Forge, Forge Neo) alike.

Only components and events both gradio versions have are used (Image, Slider, Radio, Dropdown, Checkbox,
Textbox, Accordion, ``.input``/``.change``/``.click``); the one spelling that differs, a browser-side function's
keyword (``_js`` in 3, ``js`` in 4), is ``JS``, so nothing relies on Forge's compatibility shim; gradio 4's
reference image travels as PNG (``LOSSLESS``), not its default lossy WebP. The order of the
returned components is ``fields.FIELDS``: it only ever grows at the end. Labels, values, choices and grey info
lines come from the field table; only the layout is here.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import gradio as gr

from ..params import PRESETS, ReferencePrompt, preset
from .args import panel_defaults, parse_named, same_as_preset
from .fields import FIELD, FIELDS, KEEP, MORE_SLOTS, PRESET_LABELS, PRESET_OUTPUTS, TABLE, panel_value
from .objects import PanelScript
from .official import official_settings

SLOT_HEIGHT = 180  # px: the further references' and the masks' image boxes, smaller than the main reference's

# A1111's controls (elem_id after the tab name) that "Use the official ..." sets, and the p attribute of each.
SAMPLING_CONTROLS = {"steps": "steps", "cfg_scale": "cfg_scale", "sampling": "sampler_name", "scheduler": "scheduler"}
# The controls whose value a preset fixes: moving one by hand makes the panel's preset "Custom".
PRESET_EDITS = (*PRESET_OUTPUTS, "switch_rule", "adain", "custom_prompt")
IMG2IMG_ONLY = ("inpainting",)  # presets that need img2img's inpaint tab
GRADIO_4 = int(gr.__version__.split(".")[0]) >= 4
JS = "js" if GRADIO_4 else "_js"  # the keyword of an event's browser-side function
LOSSLESS = {"format": "png"} if GRADIO_4 else {}  # gradio 4 hands an image back and forth as WebP (lossy) otherwise


def preset_after_edit(title: str, *values: object) -> object:
    """The preset box after the user moved a control: "Custom" once the values are not the preset's."""
    name = PRESET_LABELS.get(title, title)
    if name not in PRESETS:
        return gr.update()
    edited = dict(zip(PRESET_EDITS, values))
    try:
        params = parse_named({"preset": name, **edited}).params
    except ValueError:
        return gr.update(value="Custom")
    return gr.update() if same_as_preset(params, preset(name).params) else gr.update(value="Custom")


def custom_prompt_visibility(reference_prompt: str) -> object:
    """The custom reference text is shown only while "custom text" is the reference prompt."""
    return gr.update(visible=_is_custom(reference_prompt))


def _is_custom(reference_prompt: str) -> bool:
    return FIELD["reference_prompt"].labels.get(reference_prompt) is ReferencePrompt.CUSTOM


def preset_values(title: str) -> list[object]:
    """The values of the controls a preset fills, in the order of ``fields.PRESET_OUTPUTS``."""
    name = PRESET_LABELS.get(title, title)
    if name not in PRESETS:
        return [gr.update() for _ in PRESET_OUTPUTS]
    return [panel_value(FIELD[output], preset(name)) for output in PRESET_OUTPUTS]


def _props(name: str, values: dict[str, object], elem: Callable[[str], str]) -> dict[str, object]:
    """A component's keyword arguments from its row of the field table."""
    f = FIELD[name]
    props: dict[str, object] = {"label": f.label, "value": values[name], "elem_id": elem(name)}
    if f.info:
        props["info"] = f.hint
    if f.choices is not None:
        props["choices"] = list(f.choices)
    if f.range is not None:
        props.update(minimum=f.range[0], maximum=f.range[1], step=1 if f.range[1] > 1 else 0.05)
    return props


def build(script: PanelScript, is_img2img: bool, default_preset: str = "variation") -> list[gr.components.Component]:
    """Create the panel; returns its components in ``fields.FIELDS`` order."""
    from modules.ui_components import InputAccordion

    values = panel_defaults(default_preset)
    elem = script.elem_id
    with InputAccordion(values["enabled"], label=FIELD["enabled"].label, elem_id=elem("rival")) as enabled:
        with gr.Row():
            reference_image = gr.Image(type="pil", **LOSSLESS, **_props("reference_image", values, elem))
            with gr.Column():
                use_result = gr.Button("Use the selected result", elem_id=elem("use_result"))
                use_official = gr.Button("Use the official CFG, steps and sampler", elem_id=elem("use_official"))
                result_index = gr.Number(value=0, visible=False)
                preset_box = gr.Dropdown(**_preset_props(is_img2img, values, elem))
                use_init_image = gr.Checkbox(visible=is_img2img, **_props("use_init_image", values, elem))
                apply_to_hires = gr.Checkbox(visible=not is_img2img, **_props("apply_to_hires", values, elem))
        with gr.Row():
            attention_strength = gr.Slider(**_props("attention_strength", values, elem))
            adain_strength = gr.Slider(**_props("adain_strength", values, elem))
        t_align = gr.Slider(**_props("t_align", values, elem))
        t_early = gr.Slider(**_props("t_early", values, elem))
        early_plain = gr.Slider(**_props("early_plain", values, elem))
        reference_prompt = gr.Radio(**_props("reference_prompt", values, elem))
        custom_prompt = gr.Textbox(lines=1, visible=_is_custom(str(values["reference_prompt"])),
                                   **_props("custom_prompt", values, elem))
        init_latent = gr.Radio(**_props("init_latent", values, elem))
        layers = gr.Dropdown(allow_custom_value=True, **_props("layers", values, elem))
        with gr.Accordion("More references", open=False):
            reference_weight = gr.Slider(**_props("reference_weight", values, elem))
            slots = {}
            for n in MORE_SLOTS:
                with gr.Row():
                    slots[f"reference_{n}"] = gr.Image(type="pil", height=SLOT_HEIGHT, **LOSSLESS,
                                                       **_props(f"reference_{n}", values, elem))
                    slots[f"weight_{n}"] = gr.Slider(**_props(f"weight_{n}", values, elem))
        with gr.Accordion("Masks", open=False), gr.Row():
            mask = gr.Image(type="pil", image_mode="L", height=SLOT_HEIGHT, **LOSSLESS, **_props("mask", values, elem))
            reference_mask = gr.Image(type="pil", image_mode="L", height=SLOT_HEIGHT, **LOSSLESS,
                                      **_props("reference_mask", values, elem))
        with gr.Accordion("Advanced", open=False):
            switch_rule = gr.Radio(**_props("switch_rule", values, elem))
            adain = gr.Checkbox(**_props("adain", values, elem))
            show_reconstruction = gr.Checkbox(**_props("show_reconstruction", values, elem))
        official_settings = gr.Checkbox(visible=False, **_props("official_settings", values, elem))  # API only
        more_references = gr.JSON(visible=False, **_props("more_references", values, elem))  # API only
    components = {
        "enabled": enabled, "reference_image": reference_image, "use_init_image": use_init_image,
        "preset": preset_box, "t_align": t_align, "t_early": t_early, "early_plain": early_plain,
        "reference_prompt": reference_prompt, "custom_prompt": custom_prompt, "init_latent": init_latent,
        "apply_to_hires": apply_to_hires, "switch_rule": switch_rule, "adain": adain,
        "show_reconstruction": show_reconstruction, "official_settings": official_settings,
        "attention_strength": attention_strength, "adain_strength": adain_strength, "layers": layers,
        "reference_weight": reference_weight, **slots, "mask": mask, "reference_mask": reference_mask,
        "more_references": more_references,
    }
    # .input fires on the user's own changes only: a pasted infotext (which sets the preset and every
    # value) must not be overwritten by the preset's defaults, nor switch the preset to Custom.
    preset_box.input(preset_values, inputs=[preset_box], outputs=[components[name] for name in PRESET_OUTPUTS])
    edits = [components[name] for name in PRESET_EDITS]
    for control in edits:
        control.input(preset_after_edit, inputs=[preset_box, *edits], outputs=[preset_box])
    reference_prompt.change(custom_prompt_visibility, inputs=[reference_prompt], outputs=[custom_prompt])
    script.rival_result_button = (use_result, result_index, reference_image)
    script.rival_official_button = (use_official, preset_box)
    connect_official(script)
    script.infotext_fields = infotext_fields(components)
    script.paste_field_names = [key for _, key in script.infotext_fields if isinstance(key, str)]
    return [components[name] for name in FIELDS]


def collect_sampling_control(script: PanelScript, component: object, elem_id: str | None) -> None:
    """Keep A1111's steps, CFG, sampler and schedule controls of the script's tab (``after_component``)."""
    tab = "img2img" if getattr(script, "is_img2img", False) else "txt2img"
    name = (elem_id or "").removeprefix(f"{tab}_")
    if name in SAMPLING_CONTROLS and elem_id != name:
        controls = vars(script).setdefault("rival_sampling_controls", {})
        controls[name] = component
        connect_official(script)


def connect_official(script: PanelScript) -> None:
    """Wire "Use the official CFG, steps and sampler" once the button and A1111's controls all exist."""
    button, preset_box = getattr(script, "rival_official_button", (None, None))
    controls = getattr(script, "rival_sampling_controls", {})
    if button is None or getattr(script, "rival_official_wired", False) or set(controls) != set(SAMPLING_CONTROLS):
        return
    button.click(official_values, inputs=[preset_box], outputs=[controls[name] for name in SAMPLING_CONTROLS])
    script.rival_official_wired = True


def official_values(title: str) -> list[object]:
    """The official settings of the shown preset, in the order of ``SAMPLING_CONTROLS``."""
    settings = official_settings(PRESET_LABELS.get(title, title))
    return [settings[SAMPLING_CONTROLS[name]] for name in SAMPLING_CONTROLS]


def connect_gallery(script: PanelScript, gallery: object) -> None:
    """Wire "Use the selected result" to the tab's gallery once A1111 has created it."""
    button, index, image = getattr(script, "rival_result_button", (None, None, None))
    if button is not None:
        button.click(selected_image, inputs=[index, gallery], outputs=[image], **{JS: "rivalSelectedResult"})


def selected_image(index: float, gallery: list[object] | None) -> object:
    """The gallery item at ``index`` as a PIL image.

    gradio 3 gives each item as a path, a ``{"name": path}`` or ``{"data": data URL}`` dict or a data URL; gradio 4
    as an ``(image, caption)`` pair whose image is a PIL image, an array or a path, or a ``{"path": ...}`` file dict.
    A1111's gallery paths end in a ``?<mtime>`` cache-buster, which is not part of the file name.
    """
    from PIL import Image

    from .args import decode_image

    if not gallery:
        gr.Warning("RIVAL: the gallery is empty; generate an image first, then select it")
        return gr.update()
    item = gallery[min(max(int(index or 0), 0), len(gallery) - 1)]
    if isinstance(item, (list, tuple)):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("image", item)
        item = (item.get("path") or item.get("name") or item.get("data")) if isinstance(item, dict) else item
    if isinstance(item, str) and not item.startswith("data:"):
        path = item if os.path.exists(item) else item.rsplit("?", 1)[0]
        return Image.open(path).convert("RGB")
    return decode_image(item)


def _preset_props(is_img2img: bool, values: dict[str, object], elem: Callable[[str], str]) -> dict[str, object]:
    """The preset box; txt2img does not offer the presets that need img2img (unless it is the default)."""
    props = _props("preset", values, elem)
    if not is_img2img:
        props["choices"] = [title for title in FIELD["preset"].labels
                            if PRESET_LABELS[title] not in IMG2IMG_ONLY or title == values["preset"]]
    return props


def infotext_fields(components: dict[str, object]) -> list[tuple[object, object]]:
    """(component, infotext key or reader) pairs A1111 uses to paste parameters back."""
    pairs: list[tuple[object, object]] = []
    for f in TABLE:
        if f.read is not None:
            pairs.append((components[f.name], lambda d, read=f.read: _or_update(read(d))))
        elif f.key is not None:
            pairs.append((components[f.name], f.key))
    return pairs


def _or_update(value: object) -> object:
    return gr.update() if value is KEEP else value

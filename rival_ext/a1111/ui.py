"""The RIVAL panel (gradio 3.41, A1111 1.10), its presets, infotext pasting and XYZ axes.

Only components that exist in gradio 3 and 4 alike are used (Image, Slider, Radio, Dropdown,
Checkbox, Textbox, Accordion) so that Forge's gradio 4 remains reachable. The order of the
returned components is ``args.FIELDS``: it only ever grows at the end.
"""

from __future__ import annotations

import gradio as gr

from ..params import PRESETS, InitLatent, ReferencePrompt, SwitchRule, preset
from .args import (
    FIELDS,
    INIT_LATENT_LABELS,
    PRESET_LABELS,
    REFERENCE_PROMPT_LABELS,
    SWITCH_RULE_LABELS,
    label_of,
    panel_defaults,
)
from .infotext import KEYS

HINTS = {
    "reference_image": "The real image whose content and style the generation follows.",
    "use_init_image": "Use img2img's input image as the reference instead of the upload.",
    "preset": "An application of the paper; it fills the controls below with the official values.",
    "t_align": "Self-attention reads only the reference above this timestep, the reference and itself "
    "below. Lower = closer to the reference's content (official 600).",
    "t_early": "Noise statistics follow the reference above this timestep. Lower = closer to the "
    "reference's colours (official 600; 400 with ControlNet).",
    "early_plain": "Above this timestep self-attention is left alone, letting the prompt set the layout "
    "first (1000 = never; 960 style transfer, 900 editing).",
    "reference_prompt": "Text of the reference branch (inversion and attention): empty for style "
    "transfer and editing, the prompt for variations.",
    "custom_prompt": "Reference text when 'custom text' is chosen.",
    "init_latent": "Start from a seeded shuffle of the inverted reference (variations), from the "
    "inverted reference itself (editing), or from ordinary seed noise.",
    "apply_to_hires": "Invert the reference again at the hires size and keep RIVAL on in the second pass.",
    "switch_rule": "When attention switches to [reference, own]: the official code's rule or the paper's.",
    "adain": "Step-wise normalization of the noise prediction to the reference's (AdaIN).",
    "show_reconstruction": "Add the reference, inverted and sampled back, to the gallery: shows how "
    "faithful the inversion is for this model and sampler.",
}


def preset_values(title: str) -> list[object]:
    """Slider and radio values of a preset, in the order of ``PRESET_OUTPUTS``."""
    name = PRESET_LABELS.get(title, title)
    if name not in PRESETS:
        return [gr.update() for _ in range(5)]
    params = preset(name).params
    return [
        params.t_align,
        params.t_early,
        params.early_plain,
        label_of(REFERENCE_PROMPT_LABELS, params.reference_prompt),
        label_of(INIT_LATENT_LABELS, params.init_latent),
    ]


def build(script: object, is_img2img: bool, default_preset: str = "variation") -> list[gr.components.Component]:
    """Create the panel; returns its components in ``args.FIELDS`` order."""
    from modules.ui_components import InputAccordion

    values = panel_defaults(default_preset)
    elem = script.elem_id
    with InputAccordion(values["enabled"], label="RIVAL", elem_id=elem("rival")) as enabled:
        with gr.Row():
            reference_image = gr.Image(label="Reference image", type="pil", elem_id=elem("reference_image"))
            with gr.Column():
                use_result = gr.Button("Use the selected result", elem_id=elem("use_result"))
                result_index = gr.Number(value=0, visible=False)
                preset_box = gr.Dropdown(
                    label="Application", choices=list(PRESET_LABELS), value=values["preset"],
                    elem_id=elem("preset"), info=HINTS["preset"],
                )
                use_init_image = gr.Checkbox(
                    label="Use the init image as reference", value=values["use_init_image"], visible=is_img2img,
                    elem_id=elem("use_init_image"),
                )
                apply_to_hires = gr.Checkbox(
                    label="Apply to the hires pass", value=values["apply_to_hires"], visible=not is_img2img,
                    elem_id=elem("apply_to_hires"),
                )
        t_align = gr.Slider(0, 1000, value=values["t_align"], step=1, label="t_align (attention switch)",
                            info=HINTS["t_align"], elem_id=elem("t_align"))
        t_early = gr.Slider(0, 1000, value=values["t_early"], step=1, label="t_early (normalization until)",
                            info=HINTS["t_early"], elem_id=elem("t_early"))
        early_plain = gr.Slider(0, 1000, value=values["early_plain"], step=1, label="Early plain steps above",
                                info=HINTS["early_plain"], elem_id=elem("early_plain"))
        reference_prompt = gr.Radio(
            list(REFERENCE_PROMPT_LABELS), value=values["reference_prompt"],
            label="Reference prompt", info=HINTS["reference_prompt"], elem_id=elem("reference_prompt"),
        )
        custom_prompt = gr.Textbox(label="Custom reference prompt", value=values["custom_prompt"], lines=1,
                                   info=HINTS["custom_prompt"],
                                   elem_id=elem("custom_prompt"))
        init_latent = gr.Radio(
            list(INIT_LATENT_LABELS), value=values["init_latent"],
            label="Initial latent", info=HINTS["init_latent"], elem_id=elem("init_latent"),
        )
        with gr.Accordion("Advanced", open=False):
            switch_rule = gr.Radio(
                list(SWITCH_RULE_LABELS), value=values["switch_rule"],
                label="Attention switch rule", info=HINTS["switch_rule"], elem_id=elem("switch_rule"),
            )
            adain = gr.Checkbox(label="Step-wise normalization (AdaIN)", value=values["adain"], elem_id=elem("adain"))
            show_reconstruction = gr.Checkbox(
                label="Add the inversion reconstruction to the gallery", value=values["show_reconstruction"],
                elem_id=elem("show_reconstruction"),
            )
    preset_box.change(
        preset_values, inputs=[preset_box], outputs=[t_align, t_early, early_plain, reference_prompt, init_latent]
    )
    components = {
        "enabled": enabled, "reference_image": reference_image, "use_init_image": use_init_image,
        "preset": preset_box, "t_align": t_align, "t_early": t_early, "early_plain": early_plain,
        "reference_prompt": reference_prompt, "custom_prompt": custom_prompt, "init_latent": init_latent,
        "apply_to_hires": apply_to_hires, "switch_rule": switch_rule, "adain": adain,
        "show_reconstruction": show_reconstruction,
    }
    script.rival_result_button = (use_result, result_index, reference_image)
    script.infotext_fields = infotext_fields(components)
    script.paste_field_names = [key for _, key in script.infotext_fields if isinstance(key, str)]
    return [components[name] for name in FIELDS]


def connect_gallery(script: object, gallery: object) -> None:
    """Wire "Use the selected result" to the tab's gallery once A1111 has created it."""
    button, index, image = getattr(script, "rival_result_button", (None, None, None))
    if button is not None:
        button.click(selected_image, _js="rivalSelectedResult", inputs=[index, gallery], outputs=[image])


def selected_image(index: float, gallery: list | None) -> object:
    """The gallery item at ``index`` as a PIL image (gradio 3 gives paths, dicts or data URLs)."""
    from PIL import Image

    from .args import decode_image

    if not gallery:
        return gr.update()
    item = gallery[min(max(int(index or 0), 0), len(gallery) - 1)]
    if isinstance(item, (list, tuple)):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("name") or item.get("data")
    if isinstance(item, str) and not item.startswith("data:"):
        return Image.open(item).convert("RGB")
    return decode_image(item)


def infotext_fields(components: dict) -> list[tuple[object, object]]:
    """(component, infotext key or reader) pairs A1111 uses to paste parameters back."""
    return [
        (components["enabled"], lambda d: KEYS["preset"] in d),
        (components["preset"], lambda d: _title(d.get(KEYS["preset"]))),
        (components["t_align"], KEYS["t_align"]),
        (components["t_early"], KEYS["t_early"]),
        (components["early_plain"], KEYS["early_plain"]),
        (components["reference_prompt"], lambda d: _label(REFERENCE_PROMPT_LABELS, ReferencePrompt,
                                                          d.get(KEYS["reference_prompt"]))),
        (components["custom_prompt"], KEYS["custom_prompt"]),
        (components["init_latent"], lambda d: _label(INIT_LATENT_LABELS, InitLatent, d.get(KEYS["init_latent"]))),
        (components["switch_rule"], lambda d: _label(SWITCH_RULE_LABELS, SwitchRule,
                                                     d.get(KEYS["switch_rule"], "official"))),
        (components["adain"], lambda d: str(d.get(KEYS["adain"], "True")).lower() != "false"),
        (components["apply_to_hires"], lambda d: str(d.get(KEYS["apply_to_hires"], "False")).lower() == "true"),
    ]


def _title(name: object) -> object:
    if name is None:
        return gr.update()
    return PRESETS[name].title if name in PRESETS else "Custom"


def _label(labels: dict, enum: type, value: object) -> object:
    try:
        return label_of(labels, enum(value))
    except (ValueError, StopIteration):
        return gr.update()

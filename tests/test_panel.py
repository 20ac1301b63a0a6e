"""The panel's own logic as a user meets it: presets vs pasted values, Custom, visibility, settings."""

from __future__ import annotations

import gradio as gr
import harness  # noqa: F401 (puts the stub WebUI on sys.path)
import pytest
from harness import enabled, img2img, txt2img
from modules import shared

from rival_ext.image import pixel_hash
from rival_ext.webui.fields import FIELD, FIELDS
from rival_ext.webui.ui import PRESET_EDITS, custom_prompt_visibility, preset_after_edit

pytestmark = pytest.mark.ui


def _panel(module, is_img2img: bool = False):
    script = module.RivalScript()
    script.is_img2img = is_img2img
    with gr.Blocks() as demo:
        components = dict(zip(FIELDS, script.ui(is_img2img)))
    return components, demo


def _handlers(demo) -> list[tuple[int, str, list[int]]]:
    """(component id, event, output ids) of every event handler of the page: gradio 3.41's config lists the targets'
    ids and one trigger, gradio 4's (id, event) pairs."""
    out = []
    for d in demo.get_config_file()["dependencies"]:
        for target in d["targets"]:
            component, event = target if isinstance(target, (list, tuple)) else (target, d["trigger"])
            out.append((component, event, d["outputs"]))
    return out


def _triggers(demo, component) -> set[str]:
    """The events that run a handler of ``component``."""
    return {event for target, event, _ in _handlers(demo) if target == component._id}


def _labels(dropdown) -> list[str]:
    """A dropdown's choices as the user reads them (gradio 4 keeps (label, value) pairs)."""
    return [c[0] if isinstance(c, (list, tuple)) else c for c in dropdown.choices]


def test_a_pasted_infotext_is_not_overwritten_by_the_preset(webui):
    """A1111 pastes values, then runs every .change handler: the preset refills only on the user's input."""
    _, module = webui
    components, demo = _panel(module)
    assert _triggers(demo, components["preset"]) == {"input"}
    for name in PRESET_EDITS:
        assert "input" in _triggers(demo, components[name])


def _edits(title: str, **changed) -> list[object]:
    from rival_ext.webui.args import panel_defaults
    from rival_ext.webui.fields import PRESET_LABELS

    values = panel_defaults(PRESET_LABELS[title])
    return [changed.get(name, values[name]) for name in PRESET_EDITS]


def test_moving_a_control_away_from_the_preset_switches_to_custom():
    assert preset_after_edit("Editing", *_edits("Editing", t_align=500)) == gr.update(value="Custom")
    assert preset_after_edit("Editing", *_edits("Editing", adain=False)) == gr.update(value="Custom")
    assert preset_after_edit("Editing", *_edits("Editing")) == gr.update()  # back on the preset's values
    assert preset_after_edit("Editing", *_edits("Editing", custom_prompt="a text")) == gr.update()  # not in use
    assert preset_after_edit("Custom", *_edits("Editing", t_align=500)) == gr.update()


def test_the_recorded_preset_describes_the_values_used(webui):
    _, module = webui
    _, moved = txt2img(module, enabled(preset="variation", t_early=300))
    assert "RIVAL: custom" in moved.info and "RIVAL t_early: 300" in moved.info


def test_the_custom_prompt_box_shows_only_for_custom_text(webui):
    _, module = webui
    components, _ = _panel(module)
    assert components["custom_prompt"].visible is False
    labels = list(FIELD["reference_prompt"].choices)
    assert custom_prompt_visibility("custom text") == gr.update(visible=True)
    others = [label for label in labels if label != "custom text"]
    assert all(custom_prompt_visibility(label) == gr.update(visible=False) for label in others)


def test_txt2img_does_not_offer_the_inpainting_preset(webui):
    _, module = webui
    txt, _ = _panel(module, is_img2img=False)
    img, _ = _panel(module, is_img2img=True)
    assert "Inpainting" not in _labels(txt["preset"]) and "Inpainting" in _labels(img["preset"])


@pytest.mark.parametrize("stored", ["Prompt-guided (style transfer)", "prompt_guided"])
def test_the_default_preset_setting_shows_titles_and_reads_old_names(stored, monkeypatch):
    from rival_ext.webui.settings import add_settings, default_preset

    add_settings()
    titles = shared.opts.data_labels["rival_default_preset"].component_args["choices"]
    assert "Prompt-guided (style transfer)" in titles and "prompt_guided" not in titles
    monkeypatch.setitem(shared.opts.data, "rival_default_preset", stored)
    assert default_preset() == "prompt_guided"
    add_settings()  # at the next start an id saved by an older version is shown as its title
    assert shared.opts.data["rival_default_preset"] == "Prompt-guided (style transfer)"


def test_the_init_image_as_reference_is_recorded_by_its_hash(webui):
    _, module = webui
    p, result = img2img(module, {"enabled": True, "use_init_image": True})
    assert f"RIVAL reference: {pixel_hash(p.init_images[0])}" in result.info


def test_the_gpu_part_of_the_feature_cache_never_exceeds_the_total(monkeypatch):
    from rival_ext import job
    from rival_ext.webui import settings

    shared.opts.data.update(rival_feature_cache=True, rival_feature_cache_mb=512, rival_feature_cache_gpu_mb=2048)
    try:
        cache = job.feature_cache(("key",), settings.current(), on_gpu=True)
        assert cache.device_bytes == 512 * 2**20
    finally:
        shared.opts.data.update(rival_feature_cache=False)
        job.FEATURES.clear()


def test_the_official_settings_api_field_samples_as_the_paper(webui):
    _, module = webui
    p, result = txt2img(module, enabled(preset="variation", official_settings=True), steps=6)
    assert (p.steps, p.cfg_scale, p.sampler_name) == (50, 5.0, "DDIM")
    assert "Steps: 50" in result.info and "Sampler: DDIM" in result.info and "CFG scale: 5.0" in result.info
    p, _ = txt2img(module, enabled(preset="editing"), steps=6)
    assert (p.steps, p.sampler_name) == (6, "Euler")  # off by default


def test_the_official_settings_button_sets_the_tabs_controls(webui):
    """A1111 creates its steps/CFG/sampler/schedule controls (elem_id ``txt2img_...``) beside the panel."""
    from rival_ext.webui.ui import official_values

    _, module = webui
    script = module.RivalScript()
    script.is_img2img = False
    with gr.Blocks() as demo:
        controls = {name: gr.Textbox(elem_id=f"txt2img_{name}") for name in ("steps", "cfg_scale", "sampling",
                                                                               "scheduler")}
        for name, control in controls.items():
            script.after_component(control, elem_id=f"txt2img_{name}")
        script.ui(False)
    button = script.rival_official_button[0]
    clicks = [outputs for target, _, outputs in _handlers(demo) if target == button._id]
    assert clicks == [[c._id for c in controls.values()]]
    assert official_values("Variation") == [50, 5.0, "DDIM", "Automatic"]
    assert official_values("Editing") == [50, 7.0, "DDIM", "Automatic"]


def test_an_infotext_with_default_values_pastes_every_field_back(webui):
    """A generation with every value at its default writes only part of the keys (no hires, AdaIN, switch rule or
    custom prompt); pasted over a panel where everything differs, each field gets the value used, and the fields
    the infotext does not carry are left as they were."""
    from modules.infotext_utils import paste_values

    _, module = webui
    _, result = txt2img(module, enabled())
    assert "RIVAL: variation" in result.info
    assert not any(key in result.info for key in ("RIVAL hires", "RIVAL AdaIN", "RIVAL switch rule", "RIVAL custom"))
    script = module.RivalScript()
    script.is_img2img = False
    with gr.Blocks():
        components = dict(zip(FIELDS, script.ui(False)))
    image = object()
    panel = {  # every value differs from the generation's
        "enabled": False, "reference_image": image, "use_init_image": True, "preset": "Editing", "t_align": 450,
        "t_early": 350, "early_plain": 900, "reference_prompt": "custom text", "custom_prompt": "a dog",
        "init_latent": "seed noise", "apply_to_hires": True, "switch_rule": "paper (t <= t_align)", "adain": False,
        "show_reconstruction": True, "official_settings": True, "attention_strength": 0.3, "adain_strength": 0.4,
        "layers": "style", "reference_weight": -0.5, "reference_2": image, "weight_2": 0.2, "reference_3": None,
        "weight_3": 0.7, "reference_4": None, "weight_4": 1.0, "mask": image, "reference_mask": image,
        "more_references": None,
    }
    name_of = {id(component): name for name, component in components.items()}
    for (component, _), update in zip(script.infotext_fields, paste_values(script.infotext_fields, result.info)):
        if "value" in update:
            panel[name_of[id(component)]] = update["value"]
    assert panel == {
        "enabled": True, "preset": "Variation", "t_align": 600, "t_early": 600, "early_plain": 1000,
        "reference_prompt": "same as the prompt", "init_latent": "shuffled inverted latent", "apply_to_hires": False,
        "switch_rule": "official (t - 1 <= t_align)", "adain": True,
        "custom_prompt": "a dog",  # read only with "custom text", which the paste has replaced
        # not in an infotext (the image by its hash only): the user's choice stays
        "reference_image": image, "use_init_image": True, "show_reconstruction": True, "official_settings": True,
        "attention_strength": 1.0, "adain_strength": 1.0, "layers": "all", "reference_weight": 1.0,
        "reference_2": image, "weight_2": 0.2, "reference_3": None, "weight_3": 0.7, "reference_4": None,
        "weight_4": 1.0, "mask": image, "reference_mask": image, "more_references": None,
    }

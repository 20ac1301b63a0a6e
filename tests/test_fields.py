"""The field table is the only source: the browser's tooltips, the panel, its presets, the infotext
and the X/Y/Z axes must all say what the table says."""

from __future__ import annotations

import types
from pathlib import Path

import gradio as gr
import harness  # noqa: F401 (puts the stub WebUI on sys.path)
import pytest

from rival_ext.params import PRESETS, RivalParams
from rival_ext.webui import fields
from rival_ext.webui.args import panel_defaults, parse_named
from rival_ext.webui.fields import FIELD, FIELDS, PRESET_OUTPUTS, TABLE
from rival_ext.webui.ui import IMG2IMG_ONLY

KEEP_CONTROL = gr.update()  # a paste-back that leaves the control as it is (an image, recorded by hash only)

ROOT = Path(__file__).resolve().parents[1]


def test_the_browser_gets_the_tables_tooltips() -> None:
    committed = (ROOT / fields.TITLES_JS).read_text(encoding="utf-8")
    assert committed == fields.titles_js(), "run `python -m rival_ext.webui.fields` to regenerate it"
    assert "Object.assign(titles" not in (ROOT / "javascript" / "rival.js").read_text(encoding="utf-8")


def test_every_row_is_complete() -> None:
    assert len(set(FIELDS)) == len(TABLE) and len({f.label for f in TABLE}) == len(TABLE)
    for f in TABLE:
        assert f.label and f.hint.endswith(".") and f.kind in (
            "bool", "image", "preset", "number", "choice", "text", "layers", "references")
        assert (f.choices is not None) == (f.kind in ("choice", "preset", "layers")) and (f.range is not None) == (
            f.kind == "number")
        assert f.param == hasattr(RivalParams(), f.name)
        assert (f.write is None) == (f.key is None)


def _built_panel(webui):
    _, module = webui
    import gradio as gr

    script = module.RivalScript()
    script.is_img2img = False
    with gr.Blocks() as demo:
        components = script.ui(False)
    return script, dict(zip(FIELDS, components)), demo


def test_the_panel_shows_the_tables_labels_values_and_info(webui) -> None:
    from rival_ext.webui.settings import default_preset

    _, components, demo = _built_panel(webui)
    defaults = panel_defaults(default_preset())  # the panel starts with the Settings' preset
    for name, component in components.items():
        f = FIELD[name]
        assert component.label == f.label and component.value == defaults[name]
        if name != "enabled":
            assert component.info == (f.hint if f.info else None)
        if f.choices is not None:  # txt2img does not offer the presets that need img2img's inpaint tab
            expected = [c for c in f.choices if name != "preset" or fields.PRESET_LABELS[c] not in IMG2IMG_ONLY]
            assert [c[0] if isinstance(c, tuple) else c for c in component.choices] == expected
    shown = {getattr(block, "label", None) for block in demo.blocks.values()}
    shown |= {getattr(block, "value", None) for block in demo.blocks.values()}
    assert set(fields.titles()) <= shown, "a tooltip is keyed by a label the panel does not show"


@pytest.mark.parametrize("name", [*PRESETS, "nonexistent"])
def test_a_preset_fills_exactly_the_tables_preset_controls(name) -> None:
    from rival_ext.webui.ui import preset_values

    title = PRESETS[name].title if name in PRESETS else name
    values = preset_values(title)
    assert len(values) == len(PRESET_OUTPUTS) == 6
    if name in PRESETS:
        defaults = panel_defaults(name)
        assert values == [defaults[output] for output in PRESET_OUTPUTS]


def test_infotext_written_from_the_table_pastes_back(webui) -> None:
    from rival_ext.webui.infotext import generation_params

    script, components, _ = _built_panel(webui)
    args = parse_named({"enabled": True, "preset": "custom", "t_align": 450.5, "reference_prompt": "custom",
                        "custom_prompt": "a dog", "init_latent": "noise", "switch_rule": "paper", "adain": False,
                        "apply_to_hires": True})
    written = {k: str(v) for k, v in generation_params(args, "abc").items()}
    pasted = {FIELDS[list(components.values()).index(c)]: (key(written) if callable(key) else written.get(key))
              for c, key in script.infotext_fields}
    assert pasted == {
        "enabled": True, "preset": "Custom", "t_align": "450.5", "t_early": "600", "early_plain": "1000",
        "reference_prompt": "custom text", "custom_prompt": "a dog", "init_latent": "seed noise",
        "apply_to_hires": True, "switch_rule": "paper (t <= t_align)", "adain": False,
        "attention_strength": 1.0, "adain_strength": 1.0, "layers": "all", "reference_weight": 1.0,
        "mask": KEEP_CONTROL, "reference_mask": KEEP_CONTROL, "more_references": KEEP_CONTROL,
    }


def test_the_knobs_are_written_and_pasted_back(webui) -> None:
    """Strengths, layers and the weight as values; the masks and further references by their pixel hash."""
    from PIL import Image

    from rival_ext.image import pixel_hash
    from rival_ext.webui.infotext import generation_params

    script, components, _ = _built_panel(webui)
    mask, other = Image.new("L", (8, 8), 128), Image.new("RGB", (8, 8), "red")
    amounts = parse_named({"enabled": True, "preset": "style_only", "attention_strength": 0.5, "adain_strength": 0,
                           "reference_weight": -1})
    assert generation_params(amounts, "abc")["RIVAL"] == "style_only"  # how much, not which application
    args = parse_named({"enabled": True, "preset": "style_only", "attention_strength": -0.25, "adain_strength": 0.5,
                        "layers": ["output.1", "input.8"], "reference_weight": 0.75, "mask": mask,
                        "reference_2": other, "weight_2": -0.5})
    written = {k: str(v) for k, v in generation_params(args, "abc").items()}
    assert written["RIVAL"] == "custom"
    assert written["RIVAL mask"] == pixel_hash(mask) and "RIVAL reference mask" not in written
    assert written["RIVAL references"] == f"{pixel_hash(other)}:-0.5"
    pasted = {FIELDS[list(components.values()).index(c)]: (key(written) if callable(key) else written.get(key))
              for c, key in script.infotext_fields}
    assert {k: pasted[k] for k in ("attention_strength", "adain_strength", "layers", "reference_weight", "preset")} == {
        "attention_strength": -0.25, "adain_strength": 0.5, "layers": "output.1, input.8", "reference_weight": 0.75,
        "preset": "Custom"}


def test_the_xyz_axes_are_the_tables(monkeypatch) -> None:
    from collections import namedtuple

    from modules import scripts

    from rival_ext.webui import xyz

    axis = namedtuple("AxisOption", ["label", "type", "apply", "choices"], defaults=[None])
    xyz_module = types.SimpleNamespace(AxisOption=axis, axis_options=[])
    entry = types.SimpleNamespace(script_class=type("Script", (), {"__module__": "xyz_grid.py"}), module=xyz_module)
    monkeypatch.setattr(scripts, "scripts_data", [entry], raising=False)
    assert xyz.register_axes()
    assert [o.label for o in xyz_module.axis_options] == [f.axis[0] for f in TABLE if f.axis]

"""The panel in a real browser: the extension's ui.build served by gradio, driven by headless Chromium.

The page is a small gradio app: the RIVAL panel of txt2img and img2img (built by scripts/rival.py's RivalScript
over the stub WebUI of the installed gradio: A1111's with 3.41.2, Forge's with 4.40), a txt2img gallery wired by
the script's after_component (as A1111 makes it: items served as ``<path>?<mtime>``; as Forge makes it: PIL
images), and the extension's javascript/ files loaded the way the WebUI loads them, with a stand-in of the few
page helpers they use (``gradioApp``, ``onUiLoaded``, the ``titles`` map and a tooltip routine that does what
hints.js does).

Chromium and chromedriver come from the system (Debian: ``apt-get install chromium chromium-driver``; .ci/run
installs them). Without them these tests fail when CI=true and are skipped otherwise.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import time

import gradio as gr
import harness
import numpy as np
import pytest
from PIL import Image

from rival_ext.params import PRESETS
from rival_ext.webui.fields import EXTRA_TITLES, FIELD, FIELDS, PRESET_OUTPUTS, REFERENCE_KEY, panel_value, titles
from rival_ext.webui.ui import GRADIO_4, JS

CHROMIUM = os.environ.get("RIVAL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RIVAL_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2400",
)
JAVASCRIPT = sorted((harness.ROOT / "javascript").glob("*.js"))  # A1111 loads an extension's in name order
WAIT = 20.0  # seconds for the page to show what an event produced

pytestmark = pytest.mark.ui


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing_browser() -> str | None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(path) and os.access(path, os.X_OK))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return ", ".join(missing) or None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = _missing_browser()
    if missing:
        message = (f"browser tests need {missing} (Debian: apt-get install chromium chromium-driver; "
                   "or set RIVAL_CHROMIUM / RIVAL_CHROMEDRIVER)")
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class App:
    """The served test page and the handles the tests need."""

    def __init__(self, demo, url: str, scripts: dict, image: Image.Image) -> None:
        self.demo, self.url, self.scripts, self.image = demo, url, scripts, image
        self.gallery_images: list[Image.Image] = []
        self.infotext: dict[str, str] = {}

    def id(self, name: str, tab: str = "txt2img") -> str:
        return self.scripts[tab].elem_id(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loader() -> str:
    """demo.load's browser-side function: the WebUI's page helpers (a stand-in), then the extension's scripts, then
    the tooltips."""
    sources = [path.read_text(encoding="utf-8") for path in JAVASCRIPT]
    return """() => {
        const uiLoaded = [];
        window.gradioApp = () => document;
        window.onUiLoaded = (callback) => uiLoaded.push(callback);
        window.titles = window.titles || {};
        for (const source of SOURCES) {
            (0, eval)(source);  // global scope, like a <script> tag
        }
        for (const callback of uiLoaded) {
            callback();
        }
        // hints.js: a SPAN/BUTTON/P/INPUT/LI whose own text is a key of `titles` gets that title
        const attach = () => {
            for (const node of document.querySelectorAll("span, button, p, input, li")) {
                const text = node.tagName === "INPUT" ? node.value : node.textContent;
                if (!node.title && titles[text]) {
                    node.title = titles[text];
                }
            }
        };
        attach();
        new MutationObserver(attach).observe(document.body, {childList: true, subtree: true});
        window.rivalTestReady = true;
    }""".replace("SOURCES", json.dumps(sources))


def _gradio_with_starlette_1() -> None:
    """gradio 3.41.2 renders its page with ``TemplateResponse(name, context)``, a signature starlette 1.0 removed
    (leg "current" resolves starlette 1.x; A1111's fastapi 0.94 pins starlette 0.26, where it works)."""
    import starlette
    import starlette.templating

    if int(starlette.__version__.split(".")[0]) < 1:
        return
    original = starlette.templating.Jinja2Templates.TemplateResponse
    if getattr(original, "rival_test_shim", False):
        return

    def template_response(self, *args, **kwargs):
        if args and isinstance(args[0], str):
            name, context, *rest = args
            return original(self, context["request"], name, context, *rest, **kwargs)
        return original(self, *args, **kwargs)

    template_response.rival_test_shim = True
    starlette.templating.Jinja2Templates.TemplateResponse = template_response


@pytest.fixture(scope="module")
def app(browser, tmp_path_factory):
    _, module = harness.stub_environment()
    _gradio_with_starlette_1()
    files = tmp_path_factory.mktemp("gallery")
    scripts = {}
    theme = gr.themes.Default(font=["sans-serif"], font_mono=["monospace"])  # no web fonts (offline)
    with gr.Blocks(analytics_enabled=False, theme=theme) as demo:
        with gr.Tabs():
            for tab in ("txt2img", "img2img"):
                with gr.Tab(tab, elem_id=f"tab_{tab}"):
                    script = scripts[tab] = module.RivalScript()
                    script.is_img2img = tab == "img2img"
                    components = dict(zip(FIELDS, script.ui(script.is_img2img)))
                    if tab == "txt2img":
                        panel = components
                        gallery = gr.Gallery(elem_id="txt2img_gallery", **({"type": "pil"} if GRADIO_4 else {}))
                        script.after_component(gallery, elem_id="txt2img_gallery")
                        fill = gr.Button("fill gallery", elem_id="test_fill_gallery", visible=False)
                        paste = gr.Button("paste", elem_id="test_paste", visible=False)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
        url_app = App(demo, "", scripts, image)

        def pil_to_temp_file(img, dir, format="png"):  # A1111 serves gallery files as <path>?<mtime>
            path = files / f"{len(os.listdir(files)):05d}.png"
            img.save(path)
            return f"{path}?{os.path.getmtime(path)}"

        if not GRADIO_4:
            gallery.pil_to_temp_file = pil_to_temp_file
        fill.click(lambda: list(url_app.gallery_images), outputs=[gallery])

        # A1111's paste: a button's event outputs the infotext's values to the components (its .change handlers
        # then run in the browser); keys are read as A1111 reads them, callables are the extension's readers.
        pairs = scripts["txt2img"].infotext_fields

        def paste_values():
            values = []
            for component, key in pairs:
                if callable(key):
                    values.append(key(url_app.infotext))
                elif key in url_app.infotext:
                    text = url_app.infotext[key]
                    values.append(float(text) if isinstance(component, gr.Slider) else text)
                else:
                    values.append(gr.update())
            return values

        paste.click(paste_values, outputs=[component for component, _ in pairs])
        assert {component for component, _ in pairs} <= set(panel.values())
        demo.load(None, None, None, **{JS: _loader()})

    demo.queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(files)])
    url_app.url = f"http://127.0.0.1:{port}/"
    try:
        yield url_app
    finally:
        # The page's queue websocket would keep uvicorn's graceful shutdown (and so close()) waiting.
        browser.get("about:blank")
        if getattr(demo, "server", None) is not None:
            demo.server.force_exit = True
        demo.close()
        import fake_model

        fake_model.reset_a1111_state()


@pytest.fixture
def page(request, app, browser, tmp_path):
    """The page freshly loaded (every control at its default); a screenshot is saved if the test fails."""
    app.gallery_images, app.infotext = [], {}
    browser.get(app.url)
    _wait(browser, lambda: browser.execute_script("return window.rivalTestReady === true"), "the page to load")
    yield browser
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        folder = tmp_path / "browser-failure"
        folder.mkdir(exist_ok=True)
        screenshot = folder / "page.png"
        browser.save_screenshot(str(screenshot))
        (folder / "page.html").write_text(browser.page_source, encoding="utf-8")
        print(f"browser test failed: screenshot of the page in {screenshot}")


def _wait(driver, condition, what: str, timeout: float = WAIT):
    """Poll ``condition`` until it returns a truthy value; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"waited {timeout:.0f}s for {what}; last seen: {last!r}")


def _open_panel(driver, app: App, tab: str = "txt2img") -> None:
    if tab != "txt2img":
        driver.find_element("xpath", f"//button[normalize-space(text())='{tab}']").click()
    header = driver.find_element("css selector", f"#{app.id('rival', tab)} .label-wrap")
    header.click()
    _wait(driver, lambda: driver.find_element("id", app.id("t_align", tab)).is_displayed(), "the panel to open")


def _shown(driver, app: App) -> dict[str, object]:
    """What the panel shows: the preset and layer boxes, the sliders' numbers, the radios' and checkboxes' state."""
    return driver.execute_script("""
        const [ids] = arguments;
        const box = (name) => document.getElementById(ids[name]);
        const out = {preset: box("preset").querySelector("input").value,
                     layers: box("layers").querySelector("input").value};
        for (const name of ["t_align", "t_early", "early_plain", "attention_strength", "adain_strength"]) {
            out[name] = Number(box(name).querySelector("input[type=number]").value);
        }
        for (const name of ["reference_prompt", "init_latent", "switch_rule"]) {
            const checked = box(name).querySelector("input[type=radio]:checked");
            out[name] = checked ? checked.value : null;
        }
        for (const name of ["adain", "apply_to_hires", "show_reconstruction"]) {
            out[name] = box(name).querySelector("input[type=checkbox]").checked;
        }
        return out;
    """, {name: app.id(name) for name in FIELDS})


def _pick_preset(driver, app: App, title: str) -> None:
    box = driver.find_element("css selector", f"#{app.id('preset')} input")
    box.click()
    option = _wait(driver, lambda: [li for li in driver.find_elements("css selector", f"#{app.id('preset')} li")
                                    if li.text.strip() == title], f"the option {title!r}")
    option[0].click()


TXT2IMG_PRESETS = [p.title for name, p in PRESETS.items() if name not in ("variation", "inpainting")]


@pytest.mark.parametrize("title", TXT2IMG_PRESETS)
def test_picking_a_preset_fills_its_values(page, app, title):
    _open_panel(page, app)
    assert _shown(page, app)["preset"] == "Variation"
    _pick_preset(page, app, title)
    preset = next(p for p in PRESETS.values() if p.title == title)
    expected = {name: panel_value(FIELD[name], preset) for name in PRESET_OUTPUTS}
    _wait(page, lambda: {k: v for k, v in _shown(page, app).items() if k in expected} == expected,
          f"the panel to show {expected}")
    assert _shown(page, app)["preset"] == title


def _written_infotext() -> dict[str, str]:
    """An infotext the extension writes for values off every preset ("RIVAL: custom"), as text."""
    from rival_ext.webui.args import parse_named
    from rival_ext.webui.infotext import generation_params

    args = parse_named({"enabled": True, "preset": "editing", "t_align": 450, "t_early": 350, "early_plain": 980,
                        "reference_prompt": "same as the prompt", "init_latent": "seed noise",
                        "switch_rule": "paper (t <= t_align)", "adain": False, "apply_to_hires": True,
                        "attention_strength": 0.75, "adain_strength": 0.5, "layers": "output.1, input.8"})
    return {key: str(value) for key, value in generation_params(args, "0123456789").items()}


def _edited_infotext() -> dict[str, str]:
    """A named preset whose values were changed by hand (or written by another version)."""
    return {**_written_infotext(), FIELD["preset"].key: "editing"}


@pytest.mark.parametrize("infotext", [_written_infotext, _edited_infotext], ids=["written", "edited"])
def test_a_pasted_infotext_keeps_every_pasted_value(page, app, infotext):
    app.infotext = infotext()
    assert app.infotext[REFERENCE_KEY] == "0123456789" and app.infotext["RIVAL"] in ("custom", "editing")
    _open_panel(page, app)
    page.execute_script("document.getElementById('test_paste').click()")
    # gradio 4 runs the controls' input handlers on a paste too: values off their preset then show Custom
    edited_preset = "Custom" if GRADIO_4 else "Editing"
    expected = {
        "preset": "Custom" if app.infotext["RIVAL"] == "custom" else edited_preset,
        "t_align": 450, "t_early": 350, "early_plain": 980,
        "reference_prompt": "same as the prompt", "init_latent": "seed noise", "switch_rule": "paper (t <= t_align)",
        "adain": False, "apply_to_hires": True, "show_reconstruction": False,
        "attention_strength": 0.75, "adain_strength": 0.5, "layers": "output.1, input.8",
    }
    _wait(page, lambda: _shown(page, app) == expected, f"the pasted values {expected}")
    time.sleep(1.5)  # the .change handlers the paste set off have run: nothing may have moved
    assert _shown(page, app) == expected


@pytest.mark.parametrize("how", ["slider keyboard", "number box"])
def test_moving_a_slider_by_hand_makes_the_preset_custom(page, app, how):
    from selenium.webdriver.common.keys import Keys

    _open_panel(page, app)
    box = page.find_element("id", app.id("t_early"))
    if how == "slider keyboard":
        box.find_element("css selector", "input[type=range]").send_keys(Keys.ARROW_LEFT)
        moved = 599
    else:
        number = box.find_element("css selector", "input[type=number]")
        number.send_keys(Keys.CONTROL, "a")
        number.send_keys("550", Keys.ENTER)
        number.send_keys(Keys.TAB)
        moved = 550
    _wait(page, lambda: _shown(page, app)["preset"] == "Custom", "the preset box to show Custom")
    assert _shown(page, app)["t_early"] == moved


def _fetched(url: str) -> Image.Image:
    """An image the test server serves (on 127.0.0.1)."""
    from urllib.request import urlopen

    with urlopen(url, timeout=10) as response:
        return Image.open(io.BytesIO(response.read())).convert("RGB")


def _reference_shown(driver, app: App) -> Image.Image | None:
    src = driver.execute_script(
        "const img = document.querySelector(`#${arguments[0]} img`); return img ? img.src : null;",
        app.id("reference_image"))
    if not src:
        return None
    if src.startswith("http"):  # gradio 4 serves the image from its cache
        return _fetched(src)
    assert src.startswith("data:image/"), src[:80]
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")


def test_use_the_selected_result_takes_the_gallery_image(page, app):
    app.gallery_images = [app.image]
    page.execute_script("document.getElementById('test_fill_gallery').click()")
    thumbnail = _wait(page, lambda: page.execute_script(
        "const img = document.querySelector('#txt2img_gallery img'); return img ? img.getAttribute('src') : null;"),
        "the gallery to show the image")
    if GRADIO_4:  # Forge's gallery (type "pil") holds its images as gradio 4 caches them: WebP
        held = _fetched(thumbnail)
    else:
        assert "?" in thumbnail.rsplit("/", 1)[-1], f"the gallery item has no ?<mtime>: {thumbnail}"
        held = app.image
    _open_panel(page, app)
    assert _reference_shown(page, app) is None
    page.find_element("id", app.id("use_result")).click()
    shown = _wait(page, lambda: _reference_shown(page, app), "the reference box to show an image")
    assert np.array_equal(np.asarray(shown), np.asarray(held))  # no second loss on the way to the reference


def test_use_the_selected_result_with_an_empty_gallery_warns(page, app):
    _open_panel(page, app)
    page.find_element("id", app.id("use_result")).click()
    toast = _wait(page, lambda: " ".join(e.text for e in page.find_elements("css selector", ".toast-body.warning")),
                  "a warning toast")
    assert "the gallery is empty" in toast
    time.sleep(0.5)
    assert _reference_shown(page, app) is None


DOM_NAME = {"enabled": "rival"}  # InputAccordion: the user sees the accordion, not its hidden checkbox
SHOWN_ON = {"use_init_image": ("img2img",), "apply_to_hires": ("txt2img",), "official_settings": (),
            "more_references": ()}  # () = API only


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_every_control_has_its_tooltip(page, app, tab):
    _open_panel(page, app, tab)
    for accordion in ("More references", "Masks", "Advanced"):
        header = f"//*[@id='{app.id('rival', tab)}']//span[normalize-space(text())='{accordion}']"
        page.find_element("xpath", header).click()
    shot = os.environ.get("RIVAL_PANEL_SCREENSHOT")  # README's picture: the open panel as a user sees it
    if shot and tab == "txt2img":
        time.sleep(1)
        page.find_element("id", app.id("rival", tab)).screenshot(shot)
    hints = titles()
    assert set(hints) == {FIELD[name].label for name in FIELDS} | set(EXTRA_TITLES)
    controls = {name: FIELD[name].label for name in FIELDS if tab in SHOWN_ON.get(name, (tab,))}
    controls["use_result"] = "Use the selected result"
    controls["use_official"] = "Use the official CFG, steps and sampler"
    missing = {}
    for name, label in controls.items():
        if name == "custom_prompt":
            page.find_element("css selector", f"#{app.id('reference_prompt', tab)} input[value='custom text']").click()
        element_id = app.id(DOM_NAME.get(name, name), tab)
        titled = []
        deadline = time.monotonic() + 5
        while not any(label in text for text in titled) and time.monotonic() < deadline:
            time.sleep(0.1)
            titled = page.execute_script("""
                const [id, hint] = arguments;
                const control = document.getElementById(id);
                return [control, ...control.querySelectorAll("*")]
                    .filter((node) => node.title === hint && node.getClientRects().length > 0)
                    .map((node) => node.tagName + ": " + node.textContent.trim());
            """, element_id, hints[label])
        if not any(label in text for text in titled):
            missing[name] = titled
    assert not missing, f"controls without their tooltip (what carries the hint instead): {missing}"

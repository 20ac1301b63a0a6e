"""RIVAL for the AUTOMATIC1111 WebUI and its Forge forks: the panel and the callbacks (all logic in rival_ext)."""

from modules import script_callbacks, scripts

from rival_ext.webui import extension, settings, ui, xyz


class RivalScript(scripts.Script):
    """Always-visible RIVAL panel in txt2img and img2img."""

    def title(self):
        return "RIVAL"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return ui.build(self, is_img2img, settings.default_preset())

    def after_component(self, component, **kwargs):
        if kwargs.get("elem_id") in ("txt2img_gallery", "img2img_gallery"):
            ui.connect_gallery(self, component)
        ui.collect_sampling_control(self, component, kwargs.get("elem_id"))

    def process(self, p, *args):
        settings.apply_cache_settings()
        extension.start(p, args, settings.default_preset())

    def process_before_every_sampling(self, p, *args, **kwargs):
        extension.before_every_sampling(p, kwargs["x"], kwargs["noise"])

    def post_sample(self, p, ps, *args):
        extension.post_sample(p, ps.samples)

    def postprocess(self, p, processed, *args):
        extension.postprocess(p, processed)


script_callbacks.on_cfg_denoiser(extension.on_cfg_denoiser)
script_callbacks.on_cfg_after_cfg(extension.on_cfg_after_cfg)
script_callbacks.on_ui_settings(settings.add_settings)
script_callbacks.on_before_ui(xyz.register_axes)

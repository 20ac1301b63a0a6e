"""Forge: modules/ui_components.py ``InputAccordion`` on gradio 4: a hidden checkbox (the value ``ui()`` returns)
and a ``gr.Accordion`` opened with it; used as a context manager for the accordion's body.

Forge's own code passes its browser-side function as ``_js=``, which its gradio 4 shim
(modules/gradio_extensions.py) turns into ``js=``; this stand-in says ``js=`` itself (the tests load no shim) and
builds on the A1111 stub's helpers for gradio 3.
"""

from __future__ import annotations

import gradio as gr

from modules import a1111_module

_a1111 = a1111_module("ui_components")
FormComponent, ToolButton, FormRow = _a1111.FormComponent, _a1111.ToolButton, _a1111.FormRow


class InputAccordionImpl(gr.Checkbox):
    global_index = 0

    def __init__(self, value=None, setup=False, **kwargs):
        if not setup:
            super().__init__(value=value, **kwargs)
            return
        self.accordion_id = kwargs.get('elem_id')
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordionImpl.global_index}"
            InputAccordionImpl.global_index += 1
        super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        label = kwargs.get('label', 'Accordion')
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "open": value, "label": label,
                                         "elem_classes": ['input-accordion']})

    def extra(self):
        return gr.Column(elem_id=self.accordion_id + '-extra', elem_classes='input-accordion-extra', min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


# Forge: InputAccordion(value=None, **kwargs) = InputAccordionImpl(value=value, setup=True, **kwargs)
def InputAccordion(value=None, **kwargs):
    return InputAccordionImpl(value=value, setup=True, **kwargs)

"""gradio 3.41 helpers of A1111: ``InputAccordion`` (an accordion whose open state is a checkbox value),
``FormRow`` and ``ToolButton``. Imported lazily by tests because gradio takes seconds to import."""

from __future__ import annotations

import gradio as gr

class FormComponent:
    def get_expected_parent(self):
        return gr.components.Form


class ToolButton(FormComponent, gr.Button):
    """A small (emoji) button that can sit in a form row."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, elem_classes=["tool", *kwargs.pop("elem_classes", [])], **kwargs)

    def get_block_name(self):
        return "button"


class FormRow(FormComponent, gr.Row):
    def get_block_name(self):
        return "row"


class InputAccordion(gr.Checkbox):
    """A hidden checkbox (the component returned from ``ui()``; its value is the enable flag) plus a
    ``gr.Accordion`` that is opened when it is True. Use it as a context manager for the accordion body."""

    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get('elem_id')
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "open": value,
                                         "label": kwargs.get('label', 'Accordion'),
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

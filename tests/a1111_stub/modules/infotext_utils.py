"""Infotext quoting, parsing (``Key: value, ...``) and pasting into components as in A1111 v1.10.1; the old
module name is aliased."""

from __future__ import annotations

import json
import re
import sys

from modules import shared

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text):
    """JSON-quote a value only when it holds ',', ':' or a newline."""
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None) -> dict:
    """Prompt lines, then 'Negative prompt:' lines, then a last line of >= 3 'Key: value' pairs; 'WxH' values
    become 'Key-1'/'Key-2'. Only the 'Clip skip' default of A1111's many fill-ins is added here."""
    skip_fields = shared.opts.infotext_skip_pasting if skip_fields is None else skip_fields
    res: dict = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    res["Prompt"], res["Negative prompt"] = prompt, negative_prompt
    res.setdefault("Clip skip", "1")
    for key in skip_fields:
        res.pop(key, None)
    return res


# A1111: modules/infotext_utils.py connect_paste's paste_func (the params.txt fallback for an empty prompt left out):
# parse_generation_parameters, infotext_pasted_callback, then per (component, key): a callable key is called with the
# params (an exception is reported and counts as None), else params.get(key); None -> gr.update(); a gr.update dict is
# passed on; else the value is converted to type(component.value) ("False" is False for a bool, float() for an int)
# and sent as gr.update(value=...); a failed conversion sends gr.update()
def paste_values(paste_fields, prompt: str) -> list:
    """The update each component of ``paste_fields`` gets when ``prompt`` (an infotext) is pasted."""
    import gradio as gr

    from modules import errors, script_callbacks

    type_of_gr_update = type(gr.update())
    params = parse_generation_parameters(prompt)
    script_callbacks.infotext_pasted_callback(prompt, params)
    res = []
    for output, key in paste_fields:
        if callable(key):
            try:
                v = key(params)
            except Exception:
                errors.report(f"Error executing {key}", exc_info=True)
                v = None
        else:
            v = params.get(key, None)
        if v is None:
            res.append(gr.update())
        elif isinstance(v, type_of_gr_update):
            res.append(v)
        else:
            try:
                valtype = type(output.value)
                if valtype is bool and v == "False":
                    val = False
                elif valtype is int:
                    val = float(v)
                else:
                    val = valtype(v)
                res.append(gr.update(value=val))
            except Exception:
                res.append(gr.update())
    return res


sys.modules['modules.generation_parameters_copypaste'] = sys.modules[__name__]  # alias for the old name

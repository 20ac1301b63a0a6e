"""``OptionInfo`` / ``Options`` with A1111 v1.10.1's signatures (``shared.OptionInfo`` is this class)."""

from __future__ import annotations


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.category_id, self.refresh = onchange, section, category_id, refresh
        self.comment_before, self.comment_after = comment_before, comment_after
        self.infotext, self.restrict_api = infotext, restrict_api
        self.do_not_save = False

    def link(self, label, url):
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html):
        self.comment_after += html
        return self

    def needs_restart(self): return self.html(" <span class='info'>(requires restart)</span>")
    def needs_reload_ui(self): return self.html(" <span class='info'>(requires Reload UI)</span>")


def options_section(section_identifier: tuple, options_dict: dict) -> dict:
    """(id, label) sets ``section``; (id, label, category) also sets ``category_id``."""
    for info in options_dict.values():
        info.section = tuple(section_identifier[:2])
        if len(section_identifier) == 3:
            info.category_id = section_identifier[2]
    return options_dict


_builtin = {"data_labels", "data", "restricted_opts"}


class Options:
    """Attribute access over ``data`` with ``data_labels[...].default`` as the fallback.

    As in A1111, an unknown name raises AttributeError, so ``getattr(opts, name, default)`` works.
    """

    def __init__(self, data_labels: dict[str, OptionInfo], restricted_opts=None):
        self.data_labels = data_labels
        self.data = {k: v.default for k, v in data_labels.items() if not v.do_not_save}
        self.restricted_opts = restricted_opts or set()

    def __setattr__(self, key, value):
        if key in _builtin or (key not in self.data and key not in self.data_labels):
            return super().__setattr__(key, value)
        self.data[key] = value

    def __getattr__(self, item):
        if item not in _builtin:
            if item in self.data:
                return self.data[item]
            if item in self.data_labels:
                return self.data_labels[item].default
        return super().__getattribute__(item)

    def set(self, key, value, is_api=False, run_callbacks=True) -> bool:
        """What ``override_settings`` uses; calls the option's ``onchange`` when asked to."""
        if self.data.get(key) == value:
            return False
        setattr(self, key, value)
        info = self.data_labels.get(key)
        if run_callbacks and info is not None and info.onchange is not None:
            info.onchange()
        return True

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def onchange(self, key: str, func, call=True) -> None:
        self.data_labels[key].onchange = func
        if call:
            func()

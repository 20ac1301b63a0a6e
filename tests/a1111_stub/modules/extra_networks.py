"""``<name:args>`` prompt tags: parsed and stripped as in A1111; no network is registered, so activation only
fires the scripts' ``after_extra_networks_activate``."""

from __future__ import annotations

import re
from collections import defaultdict

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = item.split('=', 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return self.items == other.items


def parse_prompt(prompt: str):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts: list[str]):
    """Tags are stripped from every prompt; the returned data is the first prompt's (as in A1111)."""
    parsed = [parse_prompt(prompt) for prompt in prompts]
    return [text for text, _ in parsed], (parsed[0][1] if parsed else None)


def activate(p, extra_network_data) -> None:
    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds,
                                                subseeds=p.subseeds, extra_network_data=extra_network_data)


def deactivate(p, extra_network_data) -> None:
    pass

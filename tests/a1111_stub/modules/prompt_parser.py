"""Conditioning containers and AND-composition of A1111's prompt_parser, without prompt-editing schedules.

``c`` is a ``MulticondLearnedConditioning`` and ``uc`` a list (per image) of lists of
``ScheduledPromptConditioning``, as in A1111; every schedule here has a single entry.
"""

from __future__ import annotations

import re
from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts carrying the image size and the negative-prompt flag (SDXL needs them)."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__(prompts)
        copy_from = prompts if copy_from is None else copy_from
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, 'is_negative_prompt', False)
        self.width = width or getattr(copy_from, 'width', None)
        self.height = height or getattr(copy_from, 'height', None)


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules: list[ScheduledPromptConditioning] = schedules
        self.weight: float = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape: tuple = shape
        self.batch: list[list[ComposableScheduledPromptConditioning]] = batch


# A1111: modules/prompt_parser.py get_learned_conditioning (one call per distinct prompt)
def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    """One single-entry schedule per prompt; each prompt is encoded on its own, as A1111 does."""
    cache: dict = {}
    res = []
    for prompt in prompts:
        if prompt not in cache:
            cond = model.get_learned_conditioning(SdConditioning([prompt], copy_from=prompts))[0]
            cache[prompt] = [ScheduledPromptConditioning(steps, cond)]
        res.append(cache[prompt])
    return res


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


# A1111: modules/prompt_parser.py get_multicond_prompt_list
def get_multicond_prompt_list(prompts):
    """Split each prompt on AND into (text, weight); identical texts share one flat index."""
    flat = SdConditioning(prompts)
    flat.clear()
    index_of: dict[str, int] = {}
    res_indexes = []
    for prompt in prompts:
        indexes = []
        for part in re_AND.split(prompt):
            m = re_weight.search(part)
            text, weight = m.groups() if m is not None else (part, None)
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            indexes.append((index_of[text], float(weight) if weight is not None else 1.0))
        res_indexes.append(indexes)
    return res_indexes, flat, index_of


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None,
                                       use_old_scheduling=False) -> MulticondLearnedConditioning:
    res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(learned[i], w) for i, w in indexes] for indexes in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


def _pick(schedule, current_step):
    return next((e.cond for e in schedule if current_step <= e.end_at_step), schedule[0].cond)


# A1111: modules/prompt_parser.py reconstruct_cond_batch
def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step) -> torch.Tensor:
    return torch.stack([_pick(schedule, current_step) for schedule in c])


# A1111: modules/prompt_parser.py stack_conds
def stack_conds(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sub-prompts of different token counts are padded by repeating their last token vector (A1111)."""
    n = max(t.shape[0] for t in tensors)
    return torch.stack([torch.cat([t, t[-1:].repeat(n - t.shape[0], 1)]) if t.shape[0] < n else t for t in tensors])


# A1111: modules/prompt_parser.py reconstruct_multicond_batch
def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    """Returns (conds_list, tensor): conds_list[i] = [(row in tensor, weight), ...] for image i."""
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds = []
        for cp in composable_prompts:
            conds.append((len(tensors), cp.weight))
            tensors.append(_pick(cp.schedules, current_step))
        conds_list.append(conds)
    return conds_list, stack_conds(tensors)

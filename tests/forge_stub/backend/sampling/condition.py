"""Forge: backend/sampling/condition.py: A1111's conds compiled for the patcher's batching.

Relied on: a tensor cond becomes ``{'model_conds': {'c_crossattn': ConditionCrossAttn}}``, an SDXL dict adds
``'y': Condition(vector)``; each AND sub-prompt position of the weighted (multicond) conds is one entry with
``strength`` = its weight; cross-attention conds of other token lengths concatenate by repeating to the LCM.
"""

from __future__ import annotations

import math

import torch


def repeat_to_batch_size(tensor, batch_size):
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        return tensor.repeat([math.ceil(batch_size / tensor.shape[0])] + [1] * (len(tensor.shape) - 1))[:batch_size]
    return tensor


class Condition:
    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, device, **kwargs):
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond, *(x.cond for x in others)])


class ConditionCrossAttn(Condition):
    def can_concat(self, other):
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False
            if math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
                return False
        return True

    def concat(self, others):
        conds = [self.cond, *(x.cond for x in others)]
        length = math.lcm(*(c.shape[1] for c in conds))
        return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in conds])


def compile_conditions(cond):
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [dict(cross_attn=cond, model_conds=dict(c_crossattn=ConditionCrossAttn(cond)))]
    return [dict(cross_attn=cond['crossattn'], pooled_output=cond['vector'],
                 model_conds=dict(c_crossattn=ConditionCrossAttn(cond['crossattn']), y=Condition(cond['vector'])))]


def compile_weighted_conditions(cond, weights):
    results = []
    for cond_pre in map(list, zip(*weights)):
        indices = [i for i, _ in cond_pre]
        weight = cond_pre[-1][1]
        feed = cond.advanced_indexing(indices) if hasattr(cond, 'advanced_indexing') else cond[indices]
        h = compile_conditions(feed)
        h[0]['strength'] = weight
        results += h
    return results

"""Optimizer state written before the translators were grouped (issue #11) loads into today's optimizer.

The translators' weights need nothing: `TranslatorGroup` writes and reads the per-teacher keys of K separate
Translators. The optimizer's state, though, is a list in parameter order, and the grouping changed that list:
K translators' body convs (2K weights, 2K biases or BatchNorm pairs) became one conv and one grouped conv per
shared width. `regroup_translator_state` maps such a state onto today's parameters (each grouped buffer is the
per-teacher buffers concatenated along the output channels, exactly as the weights are), and `TrainStep`
registers it as the optimizer's load_state_dict pre-hook, so `optimizer.load_state_dict(old)` just works. A
state that already has today's layout passes through untouched."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..ops.translator import Translator, TranslatorGroup


def per_teacher_parameter_names(module: nn.Module) -> list[str]:
    """`module`'s parameter names in the order they had before the grouping: each TranslatorGroup expanded
    into K separate Translators (`{prefix}{k}.body.{i}.*`, `{prefix}{k}.head.*`, teacher by teacher)."""
    groups = {name: m for name, m in module.named_modules() if isinstance(m, TranslatorGroup)}
    names, done = [], set()
    for name, _ in module.named_parameters():
        owner = next((g for g in groups if name.startswith(f"{g}.")), None)
        if owner is None:
            names.append(name)
        elif owner not in done:
            done.add(owner)
            group = groups[owner]
            for k in range(len(group)):
                single = Translator(group.in_channels, group.out_channels[k], group.widths[k], **group.options)
                names += [f"{owner}.{k}.{n}" for n, _ in single.named_parameters()]
    return names


def grouped_sources(module: nn.Module) -> dict[str, list[str]]:
    """Today's parameter name -> the per-teacher names whose state it concatenates (a head: one name)."""
    sources = {}
    for owner, group in module.named_modules():
        if not isinstance(group, TranslatorGroup):
            continue
        for g, ks in enumerate(group.members):
            for name, _ in group.bodies[g].layers.named_parameters():
                sources[f"{owner}.bodies.{g}.layers.{name}"] = [f"{owner}.{k}.body.{name}" for k in ks]
        for k, head in enumerate(group.heads):
            for name, _ in head.named_parameters():
                sources[f"{owner}.heads.{k}.{name}"] = [f"{owner}.{k}.head.{name}"]
    return sources


def regroup_translator_state(state_dict: dict, module: nn.Module) -> dict:
    """An optimizer state dict over `module`'s parameters in the pre-grouping order -> the same state in today's
    order (one param group, every parameter trained, as `build_optimizer` makes it). Anything else (today's
    layout, several groups, a count that fits neither) is returned as it is, for torch's own checks."""
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    groups = state_dict.get("param_groups", [])
    if len(groups) != 1 or len(groups[0]["params"]) == len(names):
        return state_dict
    old_names = per_teacher_parameter_names(module)
    if len(groups[0]["params"]) != len(old_names):
        return state_dict
    old_index = dict(zip(old_names, groups[0]["params"]))
    sources = grouped_sources(module)
    state = {}
    for new_index, name in enumerate(names):
        parts = [state_dict["state"].get(old_index[n]) for n in sources.get(name, [name])]
        if any(p is None for p in parts):
            continue  # no state yet for this parameter (for example no step taken)
        state[new_index] = {key: torch.cat([p[key] for p in parts]) if len(parts) > 1 else parts[0][key]
                            for key in parts[0]}
    upgraded = copy.copy(state_dict)
    upgraded["state"] = state
    upgraded["param_groups"] = [{**groups[0], "params": list(range(len(names)))}]
    return upgraded


def accept_pre_grouping_state(optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
    """Let `optimizer.load_state_dict` read a state written before the translators were grouped."""
    optimizer.register_load_state_dict_pre_hook(lambda _opt, state_dict: regroup_translator_state(state_dict, module))

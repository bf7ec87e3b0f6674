"""One round of channel pruning on a generic network: trace on the batch, rank each group, remove, record.

Every group that may shrink (`channel_groups`) loses what is missing to reach ``ratio`` of its root layer's
original width, rounded down; the channels go by torch-pruning's ``GroupMagnitudeImportance(p=2)`` (the L2
norm over every weight of the group that follows the channel), lowest first. Groups are built and pruned
one after the other, as torch-pruning's own pruners do, so concatenations and splits see current indices.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch_pruning as tp
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from compress.sparsity.structured.channels.groups import channel_groups, survey
from compress.sparsity.structured.channels.history import (
    ChannelStructure,
    applied_channel_history,
    channel_counts,
    channel_structure,
)
from compress.sparsity.structured.channels.inputs import example_inputs, traced_graph
from compress.sparsity.structured.counts import EPS, check_ratio
from compress.sparsity.structured.history import HISTORY_ATTRIBUTE
from compress.sparsity.structured.tracing import traceable

LAYOUT = "network of Conv/Linear layers (generic layout)"


def prune_channel_round(model: nn.Module, ratio: float, batch: Any, of: ChannelStructure) -> list[dict]:
    """Removes the channels of one round from ``model``, traced on ``batch``; returns the new history entries
    (also appended to the model's own record). Nothing is traced when nothing is due."""
    check_ratio("channel_ratio", ratio)
    counts = channel_counts(channel_structure(model), ratio, of)
    if not any(counts.values()):
        return []
    check_plain_layers(model)
    done = applied_channel_history(model)
    number = 1 + max((entry["round"] for entry in done), default=0)
    scorer, names = tp.importance.GroupMagnitudeImportance(p=2), {m: n for n, m in model.named_modules()}
    entries = []
    with traceable(model):
        traced = traced_graph(model, example_inputs(model, batch))
        graph = traced.graph
        for candidate in channel_groups(model, traced):
            count = counts.get(candidate.root, 0)
            if not count:
                continue
            idxs = torch.argsort(scorer(candidate.group), stable=True)[:count].tolist()
            root = candidate.group[0].dep
            group = graph.get_pruning_group(root.target.module, root.handler, sorted(idxs))
            entries.append(_entry(group, graph, names, number, candidate.root))
            group.prune(record_history=False)
    setattr(model, HISTORY_ATTRIBUTE, [*done, *entries])
    return entries


def check_channel_round(model: nn.Module, ratio: float, batch: Any, of: ChannelStructure) -> None:
    """Before training: ``model`` traces on ``batch``, and ``ratio`` of its original widths removes some."""
    check_plain_layers(model)
    with traceable(model):
        shrinking, kept = survey(model, traced_graph(model, example_inputs(model, batch)))
    if any(math.floor(ratio * of.get(name, width) + EPS) for name, width in shrinking.items()):
        return
    whole = "; ".join(f"{name} ({reason})" for name, reason in kept.items()) or "none"
    if not shrinking:
        raise ValueError(
            f"channel_ratio: {ratio} removes nothing from {type(model).__name__}, a {LAYOUT}: torch-pruning "
            f"found no Conv/Linear layer whose channels it may remove. Kept whole: {whole}. The generic "
            "layout shrinks prunable layers whose outputs feed other layers of the network"
        )
    widths = ", ".join(f"{name} ({of.get(name, width)})" for name, width in shrinking.items())
    raise ValueError(
        f"channel_ratio: {ratio} removes nothing from {type(model).__name__}, a {LAYOUT}: the layers "
        f"torch-pruning may shrink have {widths} output channels and each loses floor(channel_ratio x width) "
        f"(earlier removals count). Kept whole: {whole}. Raise channel_ratio"
    )


def check_plain_layers(model: nn.Module) -> None:
    """The generic layout slices plain Conv/Linear layers; peft adapter layers are refused."""
    adapters = [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    if adapters:
        raise ValueError(
            f"module: {adapters[0]} is a peft adapter layer, which the generic layout cannot slice; prune "
            "before attaching the adapters, or merge_and_unload() them first"
        )


def _entry(group: tp.Group, graph: tp.DependencyGraph, names: dict, number: int, root: str) -> dict:
    """The history entry of ``group``: per module, the output or input channels it loses (as torch-pruning
    passes them to its pruning functions, so a replay is exact)."""
    entry: dict = {"round": number, "layer": root, "out_channels": {}, "in_channels": {}}
    for dep, idxs in group:
        name = names.get(dep.target.module)
        if name is None:  # torch-pruning's placeholder ops hold no weights
            continue
        pruner = graph.get_pruner_of_module(dep.target.module)
        kind = "out_channels" if dep.handler == pruner.prune_out_channels else "in_channels"
        if name in entry[kind]:
            raise RuntimeError(f"torch-pruning listed the {kind} of {name} twice in the group of {root}")
        entry[kind][name] = [int(i) for i in idxs]
    return entry

"""One round of channel pruning on a generic network: trace on the batch, rank each group, remove, record.

Every group that may shrink (`channel_groups`) loses what is missing to reach ``ratio`` of its root layer's
original width, rounded down, lowest importance first: torch-pruning's ``GroupMagnitudeImportance(p=2)``
for ``magnitude`` (the L2 norm over every weight of the group that follows the channel), or its
``GroupTaylorImportance`` for ``taylor`` (|weight x gradient| over the group, from the gradients the weights
hold: the training loss's, as `StructuredPruning` prunes right before an optimizer step). Groups are built
and pruned one after the other, as torch-pruning's own pruners do, so concatenations and splits see current
indices.

LoRA (vanilla, on linear layers) is merged into its base weights first, so the ranking sees what the model
computes with, then restarts from zero (``lora_B = 0``, unmerged: the same function) and shrinks with its
base layer (`compress.sparsity.structured.lora`, as for encoders).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from compress.sparsity.merge import lora_layers
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
from compress.sparsity.structured.lora import check_adapters, follow_base_shapes, merge_and_restart
from compress.sparsity.structured.tracing import traceable

LAYOUT = "network of Conv/Linear layers (generic layout)"


def prune_channel_round(
    model: nn.Module, ratio: float, batch: Any, of: ChannelStructure, importance: str = "magnitude"
) -> list[dict]:
    """Removes the channels of one round from ``model``, traced on ``batch``; returns the new history entries
    (also appended to the model's own record). Nothing is traced when nothing is due."""
    check_ratio("channel_ratio", ratio)
    counts = channel_counts(channel_structure(model), ratio, of)
    if not any(counts.values()):
        return []
    check_channel_adapters(model, importance)
    adapters = merge_and_restart(model)  # the ranking sees the adapters' updates; the branch is traced
    done = applied_channel_history(model)
    number = 1 + max((entry["round"] for entry in done), default=0)
    names = {m: n for n, m in model.named_modules()}
    entries = []
    with traceable(model), _scoring(model, importance) as scorer:
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
    follow_base_shapes(adapters)
    setattr(model, HISTORY_ATTRIBUTE, [*done, *entries])
    return entries


def check_channel_round(model: nn.Module, ratio: float, batch: Any, of: ChannelStructure) -> None:
    """Before training: ``model`` traces on ``batch``, and ``ratio`` of its original widths removes some."""
    check_channel_adapters(model)
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


def check_channel_adapters(model: nn.Module, importance: str = "magnitude") -> None:
    """Vanilla LoRA on linear layers only (it shrinks with its base), and not under ``taylor`` importance:
    LoRA freezes the base weights, which then have no gradients to rank by."""
    check_adapters(model)
    adapters = list(lora_layers(model))
    if importance == "taylor" and adapters:
        name = adapters[0]
        raise ValueError(
            f"importance: 'taylor' ranks channels by |weight x gradient|, but {name} is a LoRA layer whose "
            "base weight is frozen and gets no gradient; use importance='magnitude', or prune before "
            "attaching LoRA"
        )


@contextmanager
def _scoring(model: nn.Module, importance: str) -> Iterator[Any]:
    """torch-pruning's scorer for ``importance``. For ``taylor``, a layer whose weight holds no gradient
    (frozen) gets a zero one while the groups are scored (it counts nothing), and a warning names it."""
    if importance != "taylor":
        yield tp.importance.GroupMagnitudeImportance(p=2)
        return
    kinds = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
    missing = {
        name: m for name, m in model.named_modules() if isinstance(m, kinds) and m.weight is not None
        and m.weight.grad is None
    }  # fmt: skip
    for module in missing.values():
        module.weight.grad = torch.zeros_like(module.weight)
    if missing:
        shown = ", ".join(list(missing)[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
        warnings.warn(
            f"StructuredPruning: importance='taylor': {shown} had no gradient (frozen, or unused by the "
            "loss); they count zero in the ranking of the channels they share",
            stacklevel=2,
        )
    try:
        yield tp.importance.GroupTaylorImportance()
    finally:
        for module in missing.values():
            module.weight.grad = None  # pruning made new Parameters: the zeros are on those


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

"""Channel groups for structured sparsity, found by torch-pruning's `DependencyGraph`.

A group is the set of weight slices that must be removed together: for a BERT layer, the rows of
``query``/``key``/``value`` and the columns of ``attention.output.dense`` (attention channels), or a row of
``intermediate.dense`` and a column of ``output.dense`` (an FFN channel). Only groups in which every
weight-carrying module is a target are kept, so groups that would shrink the hidden size (they reach the
embeddings and LayerNorms), touch the classifier, or remove model outputs are left out.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    >>> groups = channel_groups(net, torch.randn(1, 4), {"0": net[0], "2": net[2]})
    >>> [[(tuple(w.shape), dim, len(idxs)) for w, dim, idxs in g] for g in groups]
    [[((6, 4), 0, 6), ((3, 6), 1, 6)]]
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from compress.sparsity.l1 import ChannelGroup
from compress.sparsity.targets import PRUNABLE_TYPES


def channel_groups(
    model: nn.Module, example_inputs: Any, targets: dict[str, nn.Module]
) -> list[ChannelGroup]:
    """Coupled weight slices of ``model`` whose modules are all in ``targets``.

    Args:
        model: the network to trace (an HF model, a CNN...).
        example_inputs: a batch it accepts: a tensor, a tuple, or a dict of keyword arguments.
        targets: modules allowed to change, from `compress.sparsity.targets.select_targets`.
    """
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    allowed = {id(m) for m in targets.values()}
    groups = []
    for group in graph.get_all_groups(root_module_types=list(PRUNABLE_TYPES)):
        slices = _slices(graph, group, allowed)
        if slices:
            groups.append(slices)
    return groups


def _slices(graph: tp.DependencyGraph, group: Any, allowed: set[int]) -> ChannelGroup | None:
    slices: ChannelGroup = []
    seen = set()
    for dep, idxs in group:
        module = dep.target.module
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue  # parameter-free ops (add, reshape...) carry the dependency only
        if id(module) not in allowed:
            return None
        if graph.is_out_channel_pruning_fn(dep.handler):
            dim = 0
        elif graph.is_in_channel_pruning_fn(dep.handler):
            dim = 1
        else:
            return None
        if (id(module), dim) in seen:
            continue
        seen.add((id(module), dim))
        slices.append((module.weight, dim, torch.as_tensor(list(idxs), dtype=torch.long)))
    if all(dim == 0 for _, dim, _ in slices):
        return None  # nothing consumes these channels: they are the model's outputs
    if len({len(idxs) for _, _, idxs in slices}) != 1:
        return None  # a flatten or head reshaping maps channels unevenly; not a per-channel group
    return slices

"""The channel-pruning history of a generic network: plain data that rebuilds its shapes without tracing.

An entry is one torch-pruning group as it was pruned: the round, the layer it was rooted at, and for every
module that shrank, the output or input channels it lost, counted within the module as it was then::

    [{"round": 1, "layer": "conv1", "out_channels": {"conv1": [0, 5], "bn1": [0, 5]},
      "in_channels": {"conv2": [0, 5]}}, ...]

Replay calls torch-pruning's pruning function of each module (``tp.prune_conv_out_channels``,
``prune_linear_in_channels``, the norms' ...) with those indices, entry after entry, as the group did: no
example inputs and no dependency graph are needed, and the shapes and kept weights come out identical. The
entries applied to a model object are kept on it (``HISTORY_ATTRIBUTE``, as for the other layouts).
"""

from __future__ import annotations

import math

import torch_pruning as tp
from torch import nn

from compress.sparsity.merge import lora_layers
from compress.sparsity.structured.counts import EPS
from compress.sparsity.structured.history import HISTORY_ATTRIBUTE
from compress.sparsity.structured.lora import follow_base_shapes
from compress.sparsity.structured.root import LAYER_TYPES
from compress.sparsity.structured.tracing import kept_requires_grad
from compress.sparsity.targets import select_targets

ChannelStructure = dict[str, int]  # output channels of each prunable Conv/Linear layer, by name
KINDS = ("out_channels", "in_channels")
_REGISTRY = tp.DependencyGraph()  # empty: only its table of pruning functions per module type is used


def is_channel_history(history: list[dict]) -> bool:
    """Whether ``history`` was recorded by the generic layout (entries name their modules' channels)."""
    return bool(history) and all(isinstance(e, dict) and "out_channels" in e for e in history)


def replay_channel_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Removes the channels listed in ``history``, in order; returns ``model``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> entry = {"round": 1, "layer": "0", "out_channels": {"0": [1, 2]}, "in_channels": {"2": [1, 2]}}
        >>> net = replay_channel_history(net, [entry])
        >>> net[0].out_features, net[2].in_features
        (6, 6)
    """
    modules = dict(model.named_modules())
    with kept_requires_grad(model):  # a frozen base under LoRA stays frozen
        for number, entry in enumerate(history):
            for kind, name, idxs in _checked(entry, number, modules, type(model).__name__):
                pruner = _pruner(modules[name])
                pruner.pruning_dim = -1  # as torch-pruning's Dependency sets before each call (norms read it)
                getattr(pruner, f"prune_{kind}")(modules[name], idxs)
            setattr(model, HISTORY_ATTRIBUTE, [*applied_channel_history(model), _plain(entry)])
    follow_base_shapes(lora_layers(model).values())  # LoRA wrappers report their base layers' new sizes
    return model


def applied_channel_history(model: nn.Module) -> list[dict]:
    """Every entry applied to this model object so far, in order."""
    return list(getattr(model, HISTORY_ATTRIBUTE, []))


def restore_channel_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Brings ``model`` to a complete saved ``history``: replays what its `applied_channel_history` lacks."""
    done = applied_channel_history(model)
    if [_plain(entry) for entry in history[: len(done)]] != done:
        raise ValueError(
            f"history: this {type(model).__name__} has {len(done)} removals that the saved history "
            f"({len(history)} entries) does not start with; load into a freshly built, unpruned model"
        )
    return replay_channel_history(model, history[len(done) :])


def channel_structure(model: nn.Module) -> ChannelStructure:
    """The output channels of each prunable Conv/Linear layer of ``model`` now."""
    return {name: _width(m) for name, m in select_targets(model).items() if isinstance(m, LAYER_TYPES)}


def original_channel_structure(model: nn.Module) -> ChannelStructure:
    """The structure before the applied history: what the ratio of every round refers to."""
    widths = channel_structure(model)
    for entry in applied_channel_history(model):
        for name, idxs in entry["out_channels"].items():
            if name in widths:
                widths[name] += len(idxs)
    return widths


def channel_counts(now: ChannelStructure, ratio: float, of: ChannelStructure) -> dict[str, int]:
    """Channels still to remove per layer so that ``ratio`` of ``of`` is gone (rounded down)."""
    return {
        name: max(0, math.floor(ratio * of.get(name, width) + EPS) - (of.get(name, width) - width))
        for name, width in now.items()
    }


def _checked(entry: dict, number: int, modules: dict[str, nn.Module], owner: str) -> list[tuple]:
    """``(kind, module name, indices)`` of an entry, each checked against the module as it is now."""
    if not isinstance(entry, dict) or any(not isinstance(entry.get(k), dict) for k in KINDS):
        raise ValueError(f"history: entry {number} is {entry!r}, not a channel-pruning entry of {KINDS}")
    steps = []
    for kind in KINDS:
        for name, idxs in entry[kind].items():
            module = modules.get(name)
            pruner = _pruner(module) if module is not None else None
            size = None if pruner is None else getattr(pruner, f"get_{kind}")(module)
            fits = size is not None and len(set(idxs)) == len(idxs) < size
            if not fits or not all(isinstance(i, int) and 0 <= i < size for i in idxs):
                raise ValueError(
                    f"history: entry {number} removes {kind} {idxs} of {name!r}, which {owner} "
                    f"{'does not have' if size is None else f'cannot lose (it has {size})'}; load the saved "
                    "weights into a freshly built, unpruned model of the class that was pruned"
                )
            steps.append((kind, name, list(idxs)))
    return steps


def _pruner(module: nn.Module) -> tp.pruner.BasePruningFunc | None:
    return _REGISTRY.get_pruner_of_module(module)


def _width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, tp.ops.TORCH_CONV) else layer.out_features


def _plain(entry: dict) -> dict:
    return {
        "round": int(entry.get("round", 0)),
        "layer": str(entry.get("layer", "")),
        **{kind: {str(n): [int(i) for i in ix] for n, ix in entry.get(kind, {}).items()} for kind in KINDS},
    }

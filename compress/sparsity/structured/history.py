"""Applying a pruning history: removing its heads and channels, and bringing a model to a saved history.

A history is plain data (JSON- and ``weights_only``-safe); indices count within the layer as it was when the
entry was applied: ``[{"layer": 1, "heads": [0, 3], "channels": [5, 17, ...]}, ...]``. The removals made
on a model object are kept on it (`applied_history`), so a run knows what its model has already lost.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

from compress.sparsity.structured.blocks import (
    Block,
    Structure,
    find_prunable_model,
    prunable_blocks,
    structure_of,
    unit_count,
)
from compress.sparsity.structured.lora import check_adapters, follow_base_shapes, merge_and_restart
from compress.sparsity.structured.tracing import dependency_graph, traceable

HISTORY_ATTRIBUTE = "structured_pruning_history"  # on the Hugging Face model object (not in its config)


def replay_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Removes the heads and channels listed in ``history``, in order; returns ``model``.

    The entries are appended to the model's `applied_history`.
    """
    root, model = model, find_prunable_model(model)
    if not history:
        return root
    applied = applied_history(model) + [dict(entry) for entry in history]
    check_adapters(model)
    adapters = merge_and_restart(model)
    blocks = prunable_blocks(model)
    with traceable(model):
        graph, seen = None, set()
        for entry in history:
            layer = _checked_layer(entry, blocks)
            if graph is None or layer in seen:  # a layer pruned again: trace its new shapes
                graph, seen = dependency_graph(model), set()
            seen.add(layer)
            _remove(graph, blocks[layer], entry)
    follow_base_shapes(adapters)
    _update_config(model, blocks)
    setattr(model, HISTORY_ATTRIBUTE, applied)
    return root


def applied_history(model: nn.Module) -> list[dict]:
    """Every removal `replay_history` made on this model object so far, in order."""
    return list(getattr(find_prunable_model(model), HISTORY_ATTRIBUTE, []))


def restore_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Brings ``model`` to a complete saved ``history``: replays what its `applied_history` lacks.

    A freshly built model gets all of it; a model already pruned along it (e.g. the one that was trained)
    is left as it is. Raises if the model was pruned differently (removed structure cannot come back).
    """
    done = applied_history(model)
    if [dict(entry) for entry in history[: len(done)]] != done:
        raise ValueError(
            f"history: this model has {len(done)} removals that the saved history ({len(history)} entries) "
            "does not start with; load the saved weights into a freshly built, unpruned model"
        )
    return replay_history(model, history[len(done) :])


def original_structure(model: nn.Module) -> Structure:
    """The structure before the `applied_history`: what the ratios of an iterative schedule refer to."""
    now = structure_of(model)
    heads, channels = list(now.heads), list(now.channels)
    for entry in applied_history(model):
        heads[entry["layer"]] += len(entry["heads"])
        channels[entry["layer"]] += len(entry["channels"])
    return Structure(heads, channels)


def _remove(graph: tp.DependencyGraph, block: Block, entry: dict) -> None:
    attention, size = block.attention, block.attention.attention_head_size
    if entry["heads"]:
        channels = [h * size + j for h in entry["heads"] for j in range(size)]
        graph.get_pruning_group(block.qkv[0], tp.prune_linear_out_channels, channels).prune()
        # BERT's forward reshapes with -1 heads, but these attributes describe the module to everyone else
        attention.num_attention_heads -= len(entry["heads"])
        attention.all_head_size = attention.num_attention_heads * size
    if entry["channels"]:
        graph.get_pruning_group(block.intermediate, tp.prune_linear_out_channels, entry["channels"]).prune()


def _checked_layer(entry: dict, blocks: list[Block]) -> int:
    layer = entry.get("layer")
    fits = isinstance(layer, int) and 0 <= layer < len(blocks)
    for key in ("heads", "channels") if fits else ():
        units, size = entry.get(key, []), unit_count(blocks[layer], key)
        fits = fits and len(set(units)) == len(units) < size and all(0 <= u < size for u in units)
    if not fits:
        raise ValueError(f"history: {entry} does not fit this model's {len(blocks)} layers and their sizes")
    return layer


def _update_config(model: nn.Module, blocks: list[Block]) -> None:
    """Config fields follow the modules when all layers agree (a stock config has one value for all)."""
    heads = {b.attention.num_attention_heads for b in blocks}
    channels = {b.intermediate.out_features for b in blocks}
    if len(heads) == 1:
        model.config.num_attention_heads = heads.pop()
    if len(channels) == 1:
        model.config.intermediate_size = channels.pop()

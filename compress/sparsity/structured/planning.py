"""Choosing what goes: torch-pruning ranks heads and FFN channels by importance; `prune_structured` applies.

torch-pruning's `DependencyGraph` finds what shrinks together (query/key/value outputs with the attention
output's input; the intermediate outputs with the FFN output's input). Its pruner runs in interactive
mode, so planning removes nothing; the plan is a history (see `compress.sparsity.structured.history`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Literal

import torch_pruning as tp
from torch import Tensor, nn

from compress.sparsity.merge import lora_layers, merge_lora_into_base
from compress.sparsity.structured.blocks import (
    Block,
    Structure,
    find_prunable_model,
    in_blocks,
    prunable_blocks,
    structure_of,
    unit_count,
)
from compress.sparsity.structured.counts import check_ratio, removal_counts
from compress.sparsity.structured.history import replay_history
from compress.sparsity.structured.lora import check_adapters
from compress.sparsity.structured.tracing import example_inputs, traceable

ImportanceName = Literal["magnitude", "taylor"]
IMPORTANCE = {
    "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
}


def prune_structured(
    model: nn.Module,
    head_ratio: float = 0.0,
    ffn_ratio: float = 0.0,
    importance: ImportanceName = "magnitude",
    batch: Mapping[str, Tensor] | None = None,
    uniform_per_layer: bool = True,
) -> list[dict]:
    """Removes ``head_ratio`` of the heads and ``ffn_ratio`` of the FFN channels (rounded down), in place.

    Args:
        model: a Hugging Face BERT-style model, a peft model, or a module holding one (e.g. a LightningModule
            with a teacher: the teacher is never touched).
        head_ratio: fraction of the attention heads removed (per layer, or over all layers if not uniform).
        ffn_ratio: fraction of the intermediate (FFN) channels removed.
        importance: ``magnitude`` (weight L2 norm) or ``taylor`` (|weight x gradient| of the loss on
            ``batch``), torch-pruning's GroupMagnitudeImportance / GroupTaylorImportance.
        batch: model inputs with ``labels``; needed for ``taylor``.
        uniform_per_layer: every layer loses the same number; otherwise units are ranked across layers.

    Returns:
        The history of this pruning (see `compress.sparsity.structured`).
    """
    model = find_prunable_model(model)
    history = plan_pruning(model, head_ratio, ffn_ratio, importance, batch, uniform_per_layer)
    if not history:
        structure = structure_of(model)
        raise ValueError(
            f"head_ratio={head_ratio} and ffn_ratio={ffn_ratio} remove nothing from layers with heads "
            f"{structure.heads} and channels {structure.channels}; raise a ratio"
        )
    replay_history(model, history)
    return history


def plan_pruning(
    model: nn.Module,
    head_ratio: float,
    ffn_ratio: float,
    importance: ImportanceName = "magnitude",
    batch: Mapping[str, Tensor] | None = None,
    uniform_per_layer: bool = True,
    of: Structure | None = None,
) -> list[dict]:
    """Chooses what `prune_structured` removes, without removing it (LoRA layers get merged, though).

    Ratios are fractions of ``of`` (default: the model as it is), so an iterative schedule passes the
    original structure and growing ratios. torch-pruning's pruner chooses (design.md's recipe: per-layer
    ``pruning_ratio_dict``, ``prune_num_heads=True``, ``prune_head_dims=False``); its ratios are set to the
    middle of the interval that yields the exact count, because it rounds with ``ceil``/``int``.
    """
    check_ratio("head_ratio", head_ratio)
    check_ratio("ffn_ratio", ffn_ratio)
    if importance not in IMPORTANCE:
        raise ValueError(f"importance: {importance!r} must be one of {sorted(IMPORTANCE)}")
    model = find_prunable_model(model)
    blocks = prunable_blocks(model)
    heads, channels = removal_counts(structure_of(model), head_ratio, ffn_ratio, uniform_per_layer, of)
    if not any(heads) and not any(channels):
        return []
    check_adapters(model)
    if lora_layers(model):
        merge_lora_into_base(model)  # importance must see the adapters' updates; merged LoRA is not traced
    scorer = IMPORTANCE[importance]()
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and not in_blocks(m, blocks)]
    with traceable(model):
        if importance == "taylor":
            _loss_gradients(model, batch)
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs(model),
            importance=scorer,
            pruning_ratio=0.0,  # everything outside the ratio dicts (the hidden size) stays
            num_heads={linear: b.attention.num_attention_heads for b in blocks for linear in b.qkv},
            prune_num_heads=True,
            prune_head_dims=False,
            ignored_layers=ignored,
            output_transform=lambda output: output[0],
            in_channel_groups={},  # its defaults are shared dicts it writes to (they keep every model alive)
            out_channel_groups={},
            **_pruner_ratios(blocks, heads, channels, uniform_per_layer),
        )
        history = _chosen(pruner, blocks)
        if importance == "taylor":
            model.zero_grad(set_to_none=True)  # the importance pass's gradients must not reach an optimizer
    _check_counts(history, heads, channels, uniform_per_layer)
    return history


def _pruner_ratios(blocks: list[Block], heads: list[int], channels: list[int], uniform: bool) -> dict:
    """Pruner settings removing exactly ``heads``/``channels`` (per layer, or totals if not uniform)."""

    def ratio(count: int, size: int) -> float:
        return (count - 0.5) / size  # ceil(r * size) == int-based rounding == count: no float edge cases

    if uniform:
        ratios, head_ratios = {}, {}
        for b, n_heads, n_channels in zip(blocks, heads, channels, strict=True):
            if n_heads:  # the attention scope needs a ratio > 0, or its heads are silently kept
                ratios[b.attention] = head_ratios[b.attention] = ratio(n_heads, unit_count(b, "heads"))
            if n_channels:
                ratios[b.intermediate] = ratio(n_channels, unit_count(b, "channels"))
        return {"pruning_ratio_dict": ratios, "head_pruning_ratio_dict": head_ratios}
    head_ratio = ratio(heads[0], sum(unit_count(b, "heads") for b in blocks)) if heads[0] else 0.0
    ratios = {tuple(b.attention for b in blocks): head_ratio} if heads[0] else {}
    if channels[0]:
        ffn = tuple(b.intermediate for b in blocks)
        ratios[ffn] = ratio(channels[0], sum(unit_count(b, "channels") for b in blocks))
    return {"pruning_ratio_dict": ratios, "head_pruning_ratio": head_ratio, "global_pruning": True}


def _chosen(pruner: tp.pruner.BasePruner, blocks: list[Block]) -> list[dict]:
    """The heads and channels the pruner's groups would remove (interactive mode; nothing is pruned)."""
    entries = [{"layer": i, "heads": [], "channels": []} for i in range(len(blocks))]
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if not pruner.DG.is_out_channel_pruning_fn(dep.handler):
                continue
            for entry, b in zip(entries, blocks, strict=True):
                if dep.target.module is b.qkv[0]:
                    entry["heads"] = sorted({int(i) // b.attention.attention_head_size for i in idxs})
                elif dep.target.module is b.intermediate:
                    entry["channels"] = sorted(int(i) for i in idxs)
    return [e for e in entries if e["heads"] or e["channels"]]


def _check_counts(history: list[dict], heads: list[int], channels: list[int], uniform: bool) -> None:
    chosen = [(len(e["heads"]), len(e["channels"])) for e in history]
    if uniform and chosen != [(h, c) for h, c in zip(heads, channels, strict=True) if h or c]:
        raise RuntimeError(
            f"torch-pruning chose {chosen} (heads, channels) per layer instead of {heads}, {channels}"
        )


def _loss_gradients(model: nn.Module, batch: Mapping[str, Tensor] | None) -> None:
    """Gradients of the model's own loss on ``batch``, for Taylor importance (eval mode: no dropout)."""
    accepted = inspect.signature(model.forward).parameters
    inputs = {k: v for k, v in (batch or {}).items() if k in accepted}
    if "labels" not in inputs or "input_ids" not in inputs:
        raise ValueError(
            "batch: importance='taylor' needs a batch of model inputs with `input_ids` and `labels`"
        )
    model.eval()
    model.zero_grad(set_to_none=True)
    model(**inputs).loss.backward()

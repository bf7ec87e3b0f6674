"""Which of torch-pruning's channel groups in a traced network may shrink, and why the others stay whole.

A group is rooted at the output channels of one prunable Conv/Linear layer (`select_targets`: never a
teacher, adapters or an output layer; every other Conv/Linear goes into torch-pruning's ``ignored_layers``)
and holds everything that shrinks with them: norms over those channels, the input channels of the layers
that consume them. A LoRA layer's ``lora_A``/``lora_B`` shrink with their base layer (``lora_B``'s outputs
are added to the base layer's, ``lora_A`` reads its inputs); the rank between them never does. A group
stays whole when its channels are, or reach, the network's output (an output layer the target rule did not
catch), a bare ``nn.Parameter`` or an embedding, or when torch-pruning would shrink a
module in a way the recorded history could not replay (no standard pruning function of its own).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch_pruning as tp
from torch import nn

from compress.sparsity.merge import lora_layers
from compress.sparsity.structured.channels.inputs import Traced
from compress.sparsity.structured.root import LAYER_TYPES
from compress.sparsity.targets import select_targets

KEPT_TYPES = {
    tp.ops.OPTYPE.OUTPUT: "its channels reach the network's output",
    tp.ops.OPTYPE.PARAMETER: "its channels reach a bare nn.Parameter",
    tp.ops.OPTYPE.EMBED: "its channels are an embedding's",
}


@dataclass(frozen=True)
class ChannelGroup:
    """A group that may shrink: torch-pruning's group over every output channel of the layer ``root``."""

    root: str
    group: tp.Group

    @property
    def width(self) -> int:
        return len(self.group[0].idxs)


def channel_groups(model: nn.Module, traced: Traced) -> Iterator[ChannelGroup]:
    """The groups of ``model`` that may shrink; built one at a time, so each may be pruned before the next."""
    names = {module: name for name, module in model.named_modules()}
    for root, group in _rooted_groups(model, traced, names):
        if kept_reason(group, traced, names) is None:
            yield ChannelGroup(root, group)


def survey(model: nn.Module, traced: Traced) -> tuple[dict[str, int], dict[str, str]]:
    """The widths of the layers whose groups may shrink, and why each other prunable layer stays whole."""
    names = {module: name for name, module in model.named_modules()}
    shrinking, kept, covered = {}, {}, set()
    for root, group in _rooted_groups(model, traced, names):
        reason = kept_reason(group, traced, names)
        if reason is None:
            shrinking[root] = len(group[0].idxs)
            covered |= {names.get(dep.target.module) for dep, _ in group}
        else:
            kept[root] = reason
    for name, module in select_targets(model).items():
        if name in shrinking or name in kept or name in covered:
            continue
        kept[name] = (
            "its channels are shared with a layer kept whole (a teacher, adapter or output layer)"
            if module in traced.graph.module2node
            else "forward did not run it on the batch"
        )
    return shrinking, kept


def kept_reason(group: tp.Group, traced: Traced, names: dict[nn.Module, str]) -> str | None:
    """Why ``group`` must stay whole, or None if it may shrink."""
    for dep, _ in group:
        target = dep.target
        if target.type in KEPT_TYPES:
            return KEPT_TYPES[target.type]
        if target.module not in names:  # torch-pruning's own placeholder ops (add, concat, reshape...)
            continue
        produces_output = not target.outputs or target.grad_fn in traced.output_fns
        if produces_output and traced.graph.is_out_channel_pruning_fn(dep.handler):
            return f"its channels are the network's output (through {names[target.module]})"
        pruner = traced.graph.get_pruner_of_module(target.module)
        if pruner is None or dep.handler not in (pruner.prune_out_channels, pruner.prune_in_channels):
            return f"torch-pruning would shrink {names[target.module]} with a pruning function of its own"
    return None


def _rooted_groups(
    model: nn.Module, traced: Traced, names: dict[nn.Module, str]
) -> Iterator[tuple[str, tp.Group]]:
    """torch-pruning's groups, each named by the prunable layer whose output channels it removes (a group
    may come rooted at the ``lora_B`` beside it); groups without one (a LoRA rank) are left out."""
    targets = {id(module) for module in select_targets(model).values()}
    for group in traced.graph.get_all_groups(ignored_layers=_ignored(model, targets)):
        roots = [
            dep.target.module
            for dep, _ in group
            if id(dep.target.module) in targets and traced.graph.is_out_channel_pruning_fn(dep.handler)
        ]
        if roots:
            yield names[roots[0]], group


def _ignored(model: nn.Module, targets: set[int]) -> list[nn.Module]:
    """Every Conv/Linear layer outside the targets, but for the LoRA layers that shrink with their base:
    torch-pruning never shrinks the output channels of an ignored layer."""
    kept = targets | {id(m) for layer in lora_layers(model).values() for m in layer.lora_B.values()}
    return [m for m in model.modules() if isinstance(m, LAYER_TYPES) and id(m) not in kept]

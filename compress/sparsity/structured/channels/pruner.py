"""`ChannelPruning`: the generic layout behind the interface of `compress.sparsity.layouts` (the methods
`StructuredPruning` calls each round), on the functions of `compress.sparsity.structured.channels`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> pruner = ChannelPruning(None, "groups", True)
    >>> original = pruner.original(net)
    >>> pruner.prune(net, 0.25, (torch.randn(3, 4), None), original), pruner.describe(pruner.structure(net))
    (True, 'output channels 0 12')
"""

from __future__ import annotations

from typing import Any

from torch import nn

from compress.sparsity.structured.channels.history import (
    ChannelStructure,
    applied_channel_history,
    channel_counts,
    channel_structure,
    original_channel_structure,
    replay_channel_history,
)
from compress.sparsity.structured.channels.rounds import (
    LAYOUT,
    check_channel_adapters,
    check_channel_round,
    prune_channel_round,
)


class ChannelPruning:
    """Rounds of torch-pruning on any other traceable network (`compress.sparsity.structured.channels`)."""

    layout = LAYOUT
    settings = ("channel_ratio",)

    def __init__(self, importance: str | None, head_unit: str, uniform_per_layer: bool):
        if importance not in (None, "magnitude", "taylor"):
            owner = "Llama-family decoders" if importance == "activation" else "no layout"
            raise ValueError(
                f"importance: {importance!r} is for {owner}; the generic layout ranks channels by "
                "torch-pruning's group magnitude ('magnitude', the default) or |weight x gradient| of the "
                "training loss ('taylor')"
            )
        self.importance = importance or "magnitude"
        # taylor: the rounds run right before an optimizer step, on the gradients of the step's loss
        self.ranks_by_gradients = self.importance == "taylor"
        if head_unit != "groups":
            raise ValueError(
                f"head_unit: {head_unit!r} is for Llama-family decoders; the generic layout has no attention "
                "heads: leave head_unit='groups'"
            )
        if not uniform_per_layer:
            raise ValueError(
                "uniform_per_layer: False ranks units across BERT-style layers; the generic layout removes "
                "channel_ratio of every prunable layer's channels: leave uniform_per_layer=True"
            )

    def check(self, model: nn.Module, channel_ratio: float, shares: list[float]) -> None:
        """Vanilla LoRA only, and none under ``taylor`` (what the batch allows is checked on the first one:
        `check_inputs`)."""
        check_channel_adapters(model, self.importance)

    original = staticmethod(original_channel_structure)
    structure = staticmethod(channel_structure)
    applied = staticmethod(applied_channel_history)

    @staticmethod
    def removes_something(model: nn.Module, channel_ratio: float, of: ChannelStructure) -> bool:
        return any(channel_counts(channel_structure(model), channel_ratio, of).values())

    @staticmethod
    def check_inputs(model: nn.Module, channel_ratio: float, batch: Any, of: ChannelStructure) -> None:
        """Traces ``model`` on ``batch``: the layers it may shrink lose something at ``channel_ratio``."""
        check_channel_round(model, channel_ratio, batch, of)

    def prune(self, model: nn.Module, channel_ratio: float, batch: Any, of: ChannelStructure) -> bool:
        """One round, traced on ``batch``; whether anything was removed."""
        return bool(prune_channel_round(model, channel_ratio, batch, of, self.importance))

    @staticmethod
    def replay(model: nn.Module, history: list[dict]) -> ChannelStructure:
        replay_channel_history(model, history)
        return channel_structure(model)

    @staticmethod
    def describe(structure: ChannelStructure) -> str:
        widths = [f"{name} {width}" for name, width in structure.items()]
        shown = ", ".join(widths[:8]) + (f", ... (+{len(widths) - 8} more)" if len(widths) > 8 else "")
        return f"output channels {shown}"

    @staticmethod
    def nothing_hint(channel_ratio: float, of: ChannelStructure) -> str:
        return "a layer of width w loses floor(channel_ratio x w): raise channel_ratio"

"""Structured pruning of any network torch-pruning can trace: output channels of Conv layers and hidden
units of Linear layers, removed with everything that consumes them (the generic layout).

The prunable layers follow `select_targets` (never a teacher, adapters or an output layer); torch-pruning's
`DependencyGraph`, traced on a training batch, finds what shrinks with each one (`groups`), and a round
removes ``ratio`` of each layer's original width by group magnitude or Taylor importance (`rounds`);
vanilla LoRA is merged, restarts from zero and shrinks with its base layer. The history records, per
group, the channels each module lost, so a fresh model is rebuilt without tracing (`history`).

Modules: `inputs` (what is traced), `groups` (what may shrink), `rounds` (one round), `history` (replay).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 16), nn.ReLU(),
    ...     nn.Linear(16, 4))
    >>> batch = (torch.randn(2, 1, 8, 8), torch.zeros(2))
    >>> history = prune_channel_round(net, 0.5, batch, original_channel_structure(net))
    >>> channel_structure(net)
    {'0': 4, '3': 8}
    >>> fresh = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 16), nn.ReLU(),
    ...     nn.Linear(16, 4))
    >>> restore_channel_history(fresh, history)[3].weight.shape
    torch.Size([8, 144])
"""

from compress.sparsity.structured.channels.groups import ChannelGroup, channel_groups, survey
from compress.sparsity.structured.channels.history import (
    ChannelStructure,
    applied_channel_history,
    channel_counts,
    channel_structure,
    is_channel_history,
    original_channel_structure,
    replay_channel_history,
    restore_channel_history,
)
from compress.sparsity.structured.channels.inputs import Traced, example_inputs, traced_graph
from compress.sparsity.structured.channels.rounds import (
    LAYOUT,
    check_channel_adapters,
    check_channel_round,
    prune_channel_round,
)

__all__ = [
    "LAYOUT",
    "ChannelGroup",
    "ChannelStructure",
    "Traced",
    "applied_channel_history",
    "channel_counts",
    "channel_groups",
    "channel_structure",
    "check_channel_round",
    "check_channel_adapters",
    "traced_graph",
    "example_inputs",
    "is_channel_history",
    "original_channel_structure",
    "prune_channel_round",
    "replay_channel_history",
    "restore_channel_history",
    "survey",
]

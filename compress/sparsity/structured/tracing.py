"""torch-pruning traces the model's autograd graph: the inputs it runs and the state it needs for that."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import Tensor, nn


def example_inputs(model: nn.Module) -> dict[str, Tensor]:
    """A small batch of token ids for tracing (the graph does not depend on the values)."""
    device = next(model.parameters()).device
    ids = torch.ones(2, 8, dtype=torch.long, device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def dependency_graph(model: nn.Module) -> tp.DependencyGraph:
    """What shrinks together in ``model`` as it is now (traced from `example_inputs`)."""
    return tp.DependencyGraph().build_dependency(
        model, example_inputs=example_inputs(model), output_transform=lambda output: output[0]
    )


@contextmanager
def kept_requires_grad(model: nn.Module) -> Iterator[None]:
    """torch-pruning's pruning functions make new Parameters, which require grad: each gets back its old
    flag, by name (a frozen base under LoRA stays frozen). New parameters default to requiring grad."""
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, True))


@contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """torch-pruning traces autograd: every parameter must require grad (a frozen base under LoRA does not),
    and its tracing leaves the model in eval mode. Flags are restored by name, since pruning swaps Parameters.
    """
    training = {module: module.training for module in model.modules()}
    try:
        with kept_requires_grad(model):
            for p in model.parameters():
                p.requires_grad_(True)
            with torch.enable_grad():
                yield
    finally:
        for module, mode in training.items():
            module.training = mode

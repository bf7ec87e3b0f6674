"""What torch-pruning traces a generic network on: the inputs of a training batch, and the graph it builds.

The dependency graph follows autograd through one forward pass, so it needs real inputs; a training batch
gives them: a tensor, the ``x`` of an ``(x, y)`` tuple or list, or the tensors of a dict batch that the
network's ``forward`` takes by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch_pruning as tp
from torch import Tensor, nn

ExampleInputs = tuple[Tensor, ...] | dict[str, Tensor]


@dataclass(frozen=True)
class Traced:
    """torch-pruning's graph of a network, and the autograd nodes that produced the network's outputs (a
    layer whose own result is an output has no output marker in the graph)."""

    graph: tp.DependencyGraph
    output_fns: frozenset


def example_inputs(model: nn.Module, batch: Any) -> ExampleInputs:
    """The arguments ``model`` is called with for tracing: positional (a tuple) or by name (a dict).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> x, y = torch.zeros(2, 4), torch.zeros(2)
        >>> example_inputs(nn.Linear(4, 2), (x, y))[0] is x
        True
    """
    if isinstance(batch, Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch:
        inputs = batch[0]
        if isinstance(inputs, Tensor):
            return (inputs,)
        if isinstance(inputs, (tuple, list)) and all(isinstance(t, Tensor) for t in inputs):
            return tuple(inputs)
        if isinstance(inputs, Mapping):
            return _accepted(model, inputs)
    if isinstance(batch, Mapping):
        return _accepted(model, batch)
    raise TypeError(
        f"batch: the generic layout traces {type(model).__name__} on a training batch: a tensor, an "
        f"(inputs, targets) tuple/list or a dict of tensors; got {type(batch).__name__}"
    )


def traced_graph(model: nn.Module, inputs: ExampleInputs) -> Traced:
    """torch-pruning's graph of what shrinks together in ``model``, traced on ``inputs`` (autograd on)."""
    outputs: list = []

    def forward(network: nn.Module, arguments: ExampleInputs) -> Any:
        result = network(**arguments) if isinstance(arguments, dict) else network(*arguments)
        outputs.extend(t.grad_fn for t in tp.utils.flatten_as_list(result) if isinstance(t, Tensor))
        return result

    try:
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=inputs, forward_fn=forward, verbose=False
        )
    except Exception as error:  # noqa: BLE001 - any failure of the user's forward: say what was called
        raise ValueError(
            f"module: torch-pruning could not trace {type(model).__name__} called with {_shapes(inputs)} "
            f"from the training batch ({type(error).__name__}: {error}). If the LightningModule changes its "
            "inputs before calling this network, pass module='' to trace the LightningModule's own forward"
        ) from error
    return Traced(graph, frozenset(fn for fn in outputs if fn is not None))


def _accepted(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
    parameters = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    inputs = {k: v for k, v in batch.items() if isinstance(v, Tensor) and (takes_any or k in parameters)}
    if not inputs:
        raise TypeError(
            f"batch: none of the dict batch's tensors {sorted(batch)} is an argument of "
            f"{type(model).__name__}.forward{inspect.signature(model.forward)}; name the batch's keys after "
            "its arguments, or pass module= naming the network whose forward takes them"
        )
    return inputs


def _shapes(inputs: ExampleInputs) -> str:
    if isinstance(inputs, dict):
        return ", ".join(f"{k}={tuple(v.shape)}" for k, v in inputs.items())
    return ", ".join(f"a tensor of shape {tuple(v.shape)}" for v in inputs)

"""Run a decoder one layer at a time over calibration data (the way SparseGPT and Wanda do).

`first_layer_inputs` runs the model once per batch up to its first decoder layer and keeps what that layer
received: the hidden states and the keyword arguments the model computed for it (position embeddings,
the causal mask, position ids). `run_layer` then feeds any layer those inputs and returns its outputs,
which become the next layer's inputs. Memory: one ``[batch, tokens, hidden]`` tensor per batch.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    >>> batches = [{"input_ids": torch.randint(0, 64, (2, 5)), "attention_mask": torch.ones(2, 5)}]
    >>> inputs = first_layer_inputs(model, batches)
    >>> outputs = run_layer(model.model.layers[0], inputs)
    >>> tuple(inputs[0].hidden.shape), tuple(outputs[0].hidden.shape)
    ((2, 5, 16), (2, 5, 16))
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from compress.sparsity.llm.calibration import Batch
from compress.sparsity.llm.decoder import decoder_of


@dataclass
class LayerInput:
    """What one decoder layer receives for one calibration batch."""

    hidden: torch.Tensor  # [batch, tokens, hidden]
    kwargs: dict[str, Any]  # position_embeddings, attention_mask, position_ids, ...
    attention_mask: torch.Tensor  # [batch, tokens], 1 on real tokens (padding excluded from statistics)


class _Stop(Exception):
    """Raised inside the first layer once its inputs are recorded: the rest of the model is not run."""


@torch.no_grad()
def first_layer_inputs(model: nn.Module, batches: list[Batch]) -> list[LayerInput]:
    """Inputs of the first decoder layer for each batch (no cache; the model's device)."""
    first = decoder_of(model).layers[0]
    device = next(model.parameters()).device
    seen: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def record(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        seen.append((hidden, {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache")}))
        raise _Stop

    handle = first.register_forward_pre_hook(record, with_kwargs=True)
    inputs = []
    try:
        for batch in batches:
            mask = batch["attention_mask"].to(device)
            with contextlib.suppress(_Stop):
                model(input_ids=batch["input_ids"].to(device), attention_mask=mask, use_cache=False)
            hidden, kwargs = seen.pop()
            inputs.append(LayerInput(hidden, kwargs, mask))
    finally:
        handle.remove()
    return inputs


@torch.no_grad()
def run_layer(layer: nn.Module, inputs: list[LayerInput]) -> list[LayerInput]:
    """The layer's outputs for each input, packaged as the next layer's inputs."""
    outputs = []
    for item in inputs:
        hidden = layer(item.hidden, **item.kwargs)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        outputs.append(replace(item, hidden=hidden))
    return outputs


def real_tokens(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``values`` ``[batch, tokens, ...]`` flattened to ``[real tokens, ...]`` (padding dropped)."""
    return values[attention_mask.bool()]

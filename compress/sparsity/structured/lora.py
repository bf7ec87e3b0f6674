"""LoRA under structured pruning: only vanilla LoRA on linear layers, merged first, then restarted from zero.

Importance must see the weights the model computes with, so adapters are merged into their base weights
(`merge_lora_into_base`) before planning and replay. Afterwards each restarts (``lora_B`` zeroed,
``lora_A`` kept, the layer unmerged): the function is unchanged and the adapters keep training.
torch-pruning traces the live LoRA branch and slices ``lora_A``/``lora_B`` with the base layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from compress.sparsity.merge import lora_layers, merge_lora_into_base


def check_adapters(model: nn.Module) -> None:
    """Raises on any peft adapter other than vanilla LoRA on a linear layer (those cannot be sliced)."""
    for name, layer in model.named_modules():
        vanilla = isinstance(layer, LoraLinear) and not layer.lora_variant  # lora_variant: DoRA and friends
        if isinstance(layer, BaseTunerLayer) and not vanilla:
            raise ValueError(
                f"{name}: {type(layer).__module__}.{type(layer).__name__} adapters cannot be pruned "
                "structurally (vanilla LoRA on linear layers only); merge and unload them first"
            )


def merge_and_restart(model: nn.Module) -> list[LoraLinear]:
    """Every LoRA layer of ``model`` merged into its base weight (unless it is already), then restarted
    (`restart_lora`): the same function, the adapters live again. Returns the layers."""
    adapters = list(lora_layers(model).values())
    if any(not layer.merged for layer in adapters):
        merge_lora_into_base(model)
    restart_lora(adapters)
    return adapters


def restart_lora(layers: Iterable[LoraLinear]) -> None:
    """Merged adapters restart from zero (B = 0) and count as unmerged: same function, adapters live again."""
    with torch.no_grad():
        for layer in layers:
            for lora_b in layer.lora_B.values():
                lora_b.weight.zero_()
                if lora_b.bias is not None:
                    lora_b.bias.zero_()
            layer.merged_adapters.clear()


def follow_base_shapes(layers: Iterable[LoraLinear]) -> None:
    """After pruning, each LoRA wrapper reports its (smaller) base layer's sizes."""
    for adapter in layers:
        base = adapter.get_base_layer()
        adapter.in_features, adapter.out_features = base.in_features, base.out_features

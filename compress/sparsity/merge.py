"""Sparsity-preserving LoRA merge: ``W' = M ⊙ (W + scale·B·A)``.

peft's ``merge_and_unload()`` adds the dense update ``scale·B·A`` to the base weight, so a pruned base
becomes dense again. Here the merge is peft's own (so LoRA variants and ``lora_bias`` are handled the
same way) and the base layer's mask is re-applied to the merged weight. The mask is the base weight's
non-zero pattern before the merge unless masks (keyed by the base weight's parameter name, as
`compress.callbacks.MagnitudePruning` stores them) are given.

Example:
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8))
    >>> with torch.no_grad():
    ...     net[0].weight[:, :4] = 0  # a 50%-sparse base
    >>> peft_model = get_peft_model(net, LoraConfig(target_modules=["0"], init_lora_weights=False))
    >>> merged = merge_lora_keep_sparsity(peft_model)
    >>> int((merged[0].weight == 0).sum())
    32
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from torch import nn


def lora_layers(module: nn.Module) -> dict[str, LoraLayer]:
    """peft LoRA wrapper layers inside ``module``, by dotted name."""
    return {name: child for name, child in module.named_modules() if isinstance(child, LoraLayer)}


@torch.no_grad()
def merge_lora_into_base(module: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> int:
    """Merge every LoRA layer of ``module`` into its base weight in place, keeping the base's sparsity.

    The wrappers stay in place (marked merged, as after peft's ``merge()``). Returns how many layers were
    merged.
    """
    layers = lora_layers(module)
    for name, layer in layers.items():
        base = layer.get_base_layer()
        key = f"{name}.base_layer.weight"
        mask = masks[key] if masks is not None and key in masks else base.weight != 0
        layer.merge()
        base.weight.mul_(mask.to(base.weight.device))
    return len(layers)


def merge_lora_keep_sparsity(model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Merge a peft LoRA model into its base, sparsity kept, and return the base without peft wrappers."""
    if not hasattr(model, "unload"):
        raise TypeError(
            f"merge_lora_keep_sparsity needs a peft model (PeftModel or LoraModel), got "
            f"{type(model).__name__}; "
            "call merge_lora_into_base(module) to merge LoRA layers inside another module in place."
        )
    merge_lora_into_base(model, masks)
    return model.unload()

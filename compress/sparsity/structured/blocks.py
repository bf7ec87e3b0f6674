"""What structured pruning may shrink: the model to prune and its BERT-style encoder blocks.

This is the architecture-specific part (BERT, RoBERTa, MiniLM and other encoders whose layers hold
``attention.self.query/key/value`` and ``intermediate.dense``); the planning, replay and export checks work
on the `Block` records it returns. Which layers count follows `select_targets`: never a teacher, LoRA/adapter
weights or the classification head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn
from transformers import PreTrainedModel

from compress.sparsity.roles import submodule
from compress.sparsity.structured.root import hugging_face_models
from compress.sparsity.targets import select_targets

Unit = Literal["heads", "channels"]


@dataclass(frozen=True)
class Block:
    """One encoder layer's prunable parts; the linears are the base layers under any LoRA wrapper."""

    attention: nn.Module  # BertSelfAttention-like: holds num_attention_heads, attention_head_size
    qkv: tuple[nn.Linear, nn.Linear, nn.Linear]
    intermediate: nn.Linear


@dataclass(frozen=True)
class Structure:
    """Attention heads and FFN channels per encoder layer."""

    heads: list[int]
    channels: list[int]


def find_prunable_model(module: nn.Module, attribute: str | None = None) -> nn.Module:
    """The Hugging Face model to prune: ``module`` itself, ``module.<attribute>``, or the single outermost
    `PreTrainedModel` inside ``module`` that holds prunable weights (so never a teacher)."""
    if attribute is not None:
        module = submodule(module, attribute)
    if isinstance(module, PreTrainedModel):
        return module
    found = hugging_face_models(module)
    if len(found) == 1:
        return next(iter(found.values()))
    if attribute is not None:
        raise ValueError(
            f"module: {attribute!r} is a {type(module).__name__}, not a Hugging Face model, and holds "
            f"{'the Hugging Face models ' + str(sorted(found)) if found else 'none with layers to prune'}; "
            f"name the attribute of the one to prune (module='{attribute}.<its attribute>')"
        )
    raise ValueError(
        f"module: expected one Hugging Face model (not a teacher) in {type(module).__name__}, found "
        f"{sorted(found) or 'none'}; pass module='<attribute holding the model to prune>'"
    )


def encoder_blocks(model: nn.Module) -> list[Block]:
    """The BERT-style layers (``attention.self.query/key/value``, ``intermediate.dense``) one may prune."""
    targets = select_targets(model)

    def base(name: str) -> nn.Linear | None:
        return targets.get(name, targets.get(f"{name}.base_layer"))

    blocks = []
    for name, module in model.named_modules():
        attention = getattr(getattr(module, "attention", None), "self", None)
        if not hasattr(attention, "num_attention_heads") or not hasattr(module, "intermediate"):
            continue
        qkv = tuple(base(f"{name}.attention.self.{p}") for p in ("query", "key", "value"))
        intermediate = base(f"{name}.intermediate.dense")
        if all(qkv) and intermediate is not None:
            blocks.append(Block(attention, qkv, intermediate))
    return blocks


def prunable_blocks(model: nn.Module) -> list[Block]:
    """`encoder_blocks`, which must not be empty: pruning and replay need at least one layer."""
    blocks = encoder_blocks(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no prunable BERT-style layers (attention.self.query/key/value and "
            "intermediate.dense outside the teacher, adapters and head)"
        )
    return blocks


def structure_of(model: nn.Module) -> Structure:
    """Heads and FFN channels of each prunable layer."""
    blocks = encoder_blocks(find_prunable_model(model))
    return Structure([unit_count(b, "heads") for b in blocks], [unit_count(b, "channels") for b in blocks])


def unit_count(block: Block, unit: Unit) -> int:
    """How many attention heads or FFN channels ``block`` has now."""
    return block.attention.num_attention_heads if unit == "heads" else block.intermediate.out_features


def in_blocks(linear: nn.Module, blocks: list[Block]) -> bool:
    """Whether ``linear`` is one of the prunable linears of ``blocks`` (everything else stays whole)."""
    return any(linear is b.intermediate or any(linear is q for q in b.qkv) for b in blocks)

"""`prune_llm`: Minitron-style depth and width pruning of a Llama-family causal LM into a stock, smaller one.

Importance comes from one calibration pass over the unpruned model (`llm_importance`); then the least
important decoder blocks are removed and, uniformly in every remaining layer, the least important FFN
channels, whole GQA query groups (a key/value head with its query heads) or query heads within each
group, and hidden channels (embeddings, every RMSNorm, the projections and a tied head together). The
model changes in place and is returned; its config describes it, so ``save_pretrained`` writes a folder
that plain ``AutoModelForCausalLM.from_pretrained`` reloads with the same logits. The pruned model is a
starting point for recovery by distillation from the unpruned one (`compress.modules.DistillationModule`).

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64,
    ...     num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=3, head_dim=8))
    >>> model = prune_llm(model, torch.randint(0, 64, (8, 16)), remove_layers=2, ffn_ratio=0.5,
    ...                   head_ratio=1 / 3, hidden_ratio=1 / 3, progress=False)
    >>> c = model.config
    >>> c.num_hidden_layers, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.hidden_size
    (4, 32, 4, 2, 32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from compress.sparsity.llm.calibration import Calibration
from compress.sparsity.llm.decoder import Decoder, adapter_layers, decoder_of
from compress.sparsity.llm.importance import BlockMeasure, Importance, llm_importance
from compress.sparsity.llm.slicing import keep_ffn_channels, keep_heads, keep_hidden, keep_layers

HeadUnit = Literal["groups", "heads"]


def prune_llm(
    model: nn.Module,
    calibration: Calibration,
    remove_layers: int = 0,
    layers: Sequence[int] | None = None,
    ffn_ratio: float = 0.0,
    head_ratio: float = 0.0,
    head_unit: HeadUnit = "groups",
    hidden_ratio: float = 0.0,
    block_importance: BlockMeasure = "influence",
    num_sequences: int = 128,
    batch_size: int = 8,
    progress: bool = True,
) -> nn.Module:
    """Remove decoder blocks and channels by calibration importance; returns the (same, smaller) model.

    Args:
        model: a Llama-family ``*ForCausalLM`` (Llama, SmolLM2, Mistral, Qwen2/3) without adapters.
        calibration: a `LanguageModelingDataModule`, batches or a LongTensor of ids (a few hundred rows).
        remove_layers: how many of the least important decoder blocks to remove.
        layers: the indices of the blocks to remove, instead of ``remove_layers``.
        ffn_ratio: fraction of FFN channels removed from every layer.
        head_ratio: fraction of attention units removed from every layer (see ``head_unit``).
        head_unit: ``"groups"``: whole key/value groups with their query heads; ``"heads"``: query heads
            within every group (the key/value heads stay).
        hidden_ratio: fraction of hidden channels removed from the whole model.
        block_importance: ``"influence"`` (1 − cos) or ``"skip_kl"`` (KL to the model with the block skipped).
        num_sequences: calibration rows used for importance.
        batch_size: rows per forward pass when ``calibration`` is a tensor.
        progress: show a progress bar over the calibration batches.
    """
    decoder = decoder_of(model)
    _check_plain(model)
    removed = _removed_layers(decoder, remove_layers, layers)
    counts = _unit_counts(decoder, ffn_ratio, head_ratio, head_unit, hidden_ratio)
    check_pruned_config(
        decoder, len(decoder.layers) - (len(removed) if removed else remove_layers), counts, head_unit
    )
    scores = llm_importance(
        model, calibration, block_importance, num_sequences, batch_size, progress=progress
    )
    if removed is None:
        removed = _least(scores.blocks, remove_layers).tolist()
    kept = [i for i in range(len(decoder.layers)) if i not in set(removed)]
    keep_layers(decoder, kept)  # width scores below stay indexed by the original layer
    if counts["ffn"]:
        keep_ffn_channels(decoder, [most_important(scores.ffn[i], counts["ffn"]) for i in kept])
    if counts["heads"]:
        keep_heads(decoder, [heads_to_keep(decoder, scores, i, head_unit, counts["heads"]) for i in kept])
    if counts["hidden"]:
        keep_hidden(decoder, most_important(scores.hidden, counts["hidden"]))
    return model


def _removed_layers(decoder: Decoder, remove_layers: int, layers: Sequence[int] | None) -> list[int] | None:
    total = len(decoder.layers)
    if layers is not None:
        if remove_layers:
            raise ValueError("Give remove_layers (how many) or layers (which), not both.")
        bad = [i for i in layers if not 0 <= i < total]
        if bad or len(set(layers)) == total:
            raise ValueError(
                f"layers must be distinct indices in [0, {total}) leaving one block; got {list(layers)}."
            )
        return sorted(set(layers))
    if not 0 <= remove_layers < total:
        raise ValueError(
            f"remove_layers must be in [0, {total}) for a {total}-layer model; got {remove_layers}."
        )
    return None


def _unit_counts(decoder: Decoder, ffn: float, heads: float, unit: HeadUnit, hidden: float) -> dict[str, int]:
    if unit not in ("groups", "heads"):
        raise ValueError(f"head_unit must be 'groups' or 'heads', got {unit!r}.")
    config = decoder.config
    per_group = decoder.heads // decoder.kv_heads
    heads_total = decoder.kv_heads if unit == "groups" else per_group
    return {
        "ffn": _count("ffn_ratio", ffn, config.intermediate_size, "FFN channels per layer"),
        "heads": _count(
            "head_ratio",
            heads,
            heads_total,
            f"{'key/value groups' if unit == 'groups' else 'query heads per group'}",
        ),
        "hidden": _count("hidden_ratio", hidden, config.hidden_size, "hidden channels"),
    }


def _count(name: str, ratio: float, total: int, what: str) -> int:
    """How many units to remove; an error when the ratio is out of range or removes nothing."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {ratio}.")
    removed = round(ratio * total)
    if ratio > 0 and removed == 0:
        raise ValueError(
            f"{name}={ratio} removes none of the {total} {what} (counts are rounded to the nearest unit); "
            f"a ratio above {0.5 / total:.3g} removes one."
        )
    if removed >= total:
        raise ValueError(f"{name}={ratio} would remove all {total} {what}; use a smaller ratio.")
    return removed


def check_pruned_config(decoder: Decoder, layers: int, counts: dict[str, int], unit: HeadUnit) -> None:
    """Refuse, before any work, a shape that the model's own config class would not reload.

    ``counts`` holds the units removed from the model as it is: ``"ffn"`` channels and ``"heads"`` (key/value
    groups or query heads per group, after ``unit``) per layer, and ``"hidden"`` channels.
    """
    config = decoder.config
    per_group = decoder.heads // decoder.kv_heads
    groups = decoder.kv_heads - (counts["heads"] if unit == "groups" else 0)
    queries = groups * (per_group - (counts["heads"] if unit == "heads" else 0))
    shape = dict(
        num_hidden_layers=layers,
        intermediate_size=config.intermediate_size - counts["ffn"],
        num_attention_heads=queries,
        num_key_value_heads=groups,
        head_dim=decoder.head_dim,
        hidden_size=config.hidden_size - counts["hidden"],
    )
    if isinstance(getattr(config, "layer_types", None), list):
        shape["layer_types"] = config.layer_types[:layers]
    try:
        type(config).from_dict({**config.to_dict(), **shape})
    except Exception as error:  # ValueError, or huggingface_hub's StrictDataclassError around one
        raise ValueError(
            f"The pruned shape {shape} is not a valid {type(config).__name__}: {error} Choose ratios that "
            "satisfy it (for Llama: hidden_size divisible by num_attention_heads)."
        ) from error


def heads_to_keep(
    decoder: Decoder, scores: Importance, layer: int, unit: HeadUnit, removed: int
) -> torch.Tensor:
    """Sorted query heads of ``layer`` that stay when the ``removed`` least important units of ``unit`` go.

    ``"groups"``: whole key/value groups, ranked by their query heads' summed scores; ``"heads"``: the same
    number of query heads within every group.
    """
    per_group = decoder.heads // decoder.kv_heads
    if unit == "groups":
        groups = most_important(scores.groups(layer, decoder.kv_heads), removed)
        return (groups[:, None] * per_group + torch.arange(per_group)).flatten()
    within = scores.heads[layer].view(decoder.kv_heads, per_group)
    keep = torch.stack([most_important(row, removed) for row in within])  # [groups, kept per group]
    return (keep + torch.arange(decoder.kv_heads)[:, None] * per_group).flatten()


def most_important(scores: torch.Tensor, removed: int) -> torch.Tensor:
    """Sorted indices of all but the ``removed`` lowest scores (ties: the earlier index is kept)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[: scores.numel() - removed]).values


def _least(scores: torch.Tensor, count: int) -> torch.Tensor:
    order = torch.sort(scores, stable=True).indices
    return torch.sort(order[:count]).values


def _check_plain(model: nn.Module) -> None:
    adapted = adapter_layers(model)
    if adapted:
        raise ValueError(
            f"prune_llm needs a model without adapters; found {adapted[0]!r}. Merge them first "
            "(compress.sparsity.merge_lora_keep_sparsity) or prune before attaching LoRA."
        )

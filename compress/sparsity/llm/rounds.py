"""One round of gradual width pruning of a Llama-family decoder, ranked on the batch about to be trained.

A round removes what is missing to reach ``head_ratio`` and ``ffn_ratio`` of the structure before any
pruning (``of``; ratios are cumulative, counts rounded down, earlier removals count), in every layer alike:
whole key/value groups or query heads within every group (``head_unit``), and FFN channels. The least
important go, by Minitron activation importance (`llm_importance`) on one batch of ``input_ids`` (and
``attention_mask``), computed without gradients in eval mode. `plan_decoder_round` returns the round as a
history entry (`compress.sparsity.llm.history`); `replay_decoder_history` applies it.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3, head_dim=8))
    >>> batch = {"input_ids": torch.randint(0, 64, (4, 12))}
    >>> plan = plan_decoder_round(model, head_ratio=0.5, ffn_ratio=0.25, head_unit="heads", batch=batch)
    >>> [len(units) for units in plan[0]["heads"]], [len(units) for units in plan[0]["channels"]]
    ([3, 3], [16, 16])
    >>> from compress.sparsity.llm.history import replay_decoder_history
    >>> decoder_structure(replay_decoder_history(model, plan))
    DecoderStructure(groups=3, heads_per_group=1, channels=48)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from compress.sparsity.llm.decoder import decoder_of
from compress.sparsity.llm.history import DecoderStructure, decoder_structure
from compress.sparsity.llm.importance import llm_importance
from compress.sparsity.llm.prune import HeadUnit, check_pruned_config, heads_to_keep, most_important
from compress.sparsity.structured.counts import EPS

__all__ = ["check_decoder_round", "decoder_removal_counts", "plan_decoder_round"]


def decoder_removal_counts(
    now: DecoderStructure,
    head_ratio: float,
    ffn_ratio: float,
    head_unit: HeadUnit,
    of: DecoderStructure | None = None,
) -> tuple[int, int]:
    """Head units and FFN channels still to remove from every layer so that the ratios of ``of`` (default
    ``now``) are gone: ``floor(ratio * original)`` minus what is already gone, never below 0."""
    of = of or now

    def count(current: int, original: int, ratio: float) -> int:
        return max(0, math.floor(ratio * original + EPS) - (original - current))

    return (
        count(now.units(head_unit), of.units(head_unit), head_ratio),
        count(now.channels, of.channels, ffn_ratio),
    )


def plan_decoder_round(
    model: nn.Module,
    head_ratio: float,
    ffn_ratio: float,
    head_unit: HeadUnit,
    batch: Any,
    of: DecoderStructure | None = None,
) -> list[dict]:
    """The history entry of one round (an empty list if nothing is left to remove); the model is unchanged.

    Args:
        model: a Llama-family ``*ForCausalLM`` without adapters.
        head_ratio: fraction of ``of``'s head units (see ``head_unit``) gone after this round.
        ffn_ratio: fraction of ``of``'s FFN channels gone after this round.
        head_unit: ``"groups"`` (key/value groups with their query heads) or ``"heads"`` (query heads
            within every group).
        batch: a mapping with ``input_ids`` and optionally ``attention_mask``, e.g. a training batch.
        of: the structure the ratios refer to (default: the model as it is).
    """
    heads, channels = decoder_removal_counts(decoder_structure(model), head_ratio, ffn_ratio, head_unit, of)
    if not heads and not channels:
        return []
    decoder = decoder_of(model)
    scores = llm_importance(model, [_inputs(batch)], num_sequences=len(batch["input_ids"]))
    layers = range(len(decoder.layers))
    width = decoder.config.intermediate_size
    kept_heads = [heads_to_keep(decoder, scores, i, head_unit, heads) if heads else None for i in layers]
    kept_channels = [most_important(scores.ffn[i], channels) if channels else None for i in layers]
    return [
        {
            "head_unit": head_unit,
            "heads": [_removed(kept, decoder.heads) for kept in kept_heads],
            "channels": [_removed(kept, width) for kept in kept_channels],
        }
    ]


def check_decoder_round(
    model: nn.Module, head_ratio: float, ffn_ratio: float, head_unit: HeadUnit, of: DecoderStructure
) -> None:
    """Refuses ratios whose pruned shape the model's config class would not reload (`check_pruned_config`)."""
    heads, channels = decoder_removal_counts(decoder_structure(model), head_ratio, ffn_ratio, head_unit, of)
    decoder = decoder_of(model)
    counts = {"ffn": channels, "heads": heads, "hidden": 0}
    check_pruned_config(decoder, len(decoder.layers), counts, head_unit)


def _inputs(batch: Any) -> dict[str, torch.Tensor]:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        found = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(
            "batch: activation importance runs the model on the training batch, a mapping with input_ids "
            f"(and attention_mask) as LanguageModelingDataModule yields; got {found}"
        )
    return {key: batch[key] for key in ("input_ids", "attention_mask") if key in batch}


def _removed(kept: torch.Tensor | None, size: int) -> list[int]:
    if kept is None:
        return []
    stays = set(kept.tolist())
    return [i for i in range(size) if i not in stays]

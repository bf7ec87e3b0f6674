"""The pruning history of a Llama-family decoder: plain data that rebuilds the pruned shapes on a fresh model.

An entry is one pruning round over every decoder layer (their widths stay equal, as a stock config needs):
per layer, the query heads and FFN channels it removed, counted within the layer as it was then, and the
unit its head ratio counted (``"groups"``: whole key/value groups with their query heads; ``"heads"``: as
many query heads within every group)::

    [{"head_unit": "groups", "heads": [[2, 3], [0, 1]], "channels": [[5, 17], [3, 9]]}, ...]

It is JSON- and ``weights_only``-safe. `replay_decoder_history` slices the weights and updates the config
(`compress.sparsity.llm.slicing`), and appends the entries to the model object's own record (the attribute
``HISTORY_ATTRIBUTE``, as for encoders): `restore_decoder_history` then replays only what a model lacks,
and `original_decoder_structure` knows the shape before any round.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    >>> entry = {"head_unit": "groups", "heads": [[0, 1], [2, 3]], "channels": [[0, 5], [1, 2]]}
    >>> _ = replay_decoder_history(model, [entry])
    >>> decoder_structure(model), model.config.num_key_value_heads, model.config.intermediate_size
    (DecoderStructure(groups=1, heads_per_group=2, channels=30), 1, 30)
    >>> original_decoder_structure(model)
    DecoderStructure(groups=2, heads_per_group=2, channels=32)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compress.sparsity.llm.decoder import Decoder, adapter_layers, decoder_of
from compress.sparsity.llm.prune import HeadUnit
from compress.sparsity.llm.slicing import keep_ffn_channels, keep_heads
from compress.sparsity.structured.history import HISTORY_ATTRIBUTE


@dataclass(frozen=True)
class DecoderStructure:
    """The widths every decoder layer shares: key/value groups, query heads per group, FFN channels."""

    groups: int
    heads_per_group: int
    channels: int

    def units(self, head_unit: HeadUnit) -> int:
        """How many units a head ratio counts: key/value groups, or query heads per group."""
        return self.groups if head_unit == "groups" else self.heads_per_group


def decoder_structure(model: nn.Module) -> DecoderStructure:
    """The structure of a Llama-family ``*ForCausalLM`` now."""
    decoder = decoder_of(model)
    return DecoderStructure(
        decoder.kv_heads, decoder.heads // decoder.kv_heads, decoder.config.intermediate_size
    )


def applied_decoder_history(model: nn.Module) -> list[dict]:
    """Every entry `replay_decoder_history` applied to this model object so far, in order."""
    return list(getattr(model, HISTORY_ATTRIBUTE, []))


def replay_decoder_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Removes the heads and channels listed in ``history``, in order; returns ``model``."""
    decoder = decoder_of(model)
    check_no_adapters(model)
    for entry in history:
        heads, channels = _checked(entry, decoder)
        if heads[0]:
            keep_heads(decoder, [_complement(removed, decoder.heads) for removed in heads])
        if channels[0]:
            width = decoder.config.intermediate_size
            keep_ffn_channels(decoder, [_complement(removed, width) for removed in channels])
        setattr(model, HISTORY_ATTRIBUTE, [*applied_decoder_history(model), _plain(entry)])
    return model


def restore_decoder_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Brings ``model`` to a complete saved ``history``: replays what its `applied_decoder_history` lacks.

    A freshly built model gets all of it; the model that was pruned along it is left as it is. Raises if the
    model was pruned differently (removed structure cannot come back).
    """
    done = applied_decoder_history(model)
    if list(history[: len(done)]) != done:
        raise ValueError(
            f"history: this model has {len(done)} removals that the saved history ({len(history)} entries) "
            "does not start with; load the saved weights into a freshly built, unpruned model"
        )
    return replay_decoder_history(model, history[len(done) :])


def original_decoder_structure(model: nn.Module) -> DecoderStructure:
    """The structure before the `applied_decoder_history`: what an iterative schedule's ratios refer to."""
    now = decoder_structure(model)
    groups, per_group, channels = now.groups, now.heads_per_group, now.channels
    for entry in reversed(applied_decoder_history(model)):
        removed = len(entry["heads"][0])
        if entry["head_unit"] == "groups":
            groups += removed // per_group
        else:
            per_group += removed // groups
        channels += len(entry["channels"][0])
    return DecoderStructure(groups, per_group, channels)


def check_no_adapters(model: nn.Module) -> None:
    """Refuses LoRA and other adapter layers: decoder pruning slices plain ``nn.Linear`` weights only."""
    adapted = adapter_layers(model)
    if adapted:
        raise ValueError(
            f"adapter: structured pruning of a Llama-family model slices plain weights, found the adapter "
            f"layer {adapted[0]!r} in {type(model).__name__}; prune first (compress.sparsity.prune_llm, or "
            "this pruning without an adapter), then attach LoRA to the pruned model"
        )


def _checked(entry: dict, decoder: Decoder) -> tuple[list[list[int]], list[list[int]]]:
    """The entry's heads and channels, if they fit the decoder as it is now; otherwise a ValueError."""
    fields = entry if isinstance(entry, dict) else {}
    unit, heads, channels = fields.get("head_unit"), fields.get("heads"), fields.get("channels")
    n, width = len(decoder.layers), decoder.config.intermediate_size
    fits = (
        unit in ("groups", "heads")
        and _fits_layers(heads, n, decoder.heads)
        and _fits_layers(channels, n, width)
        and all(_fits_groups(removed, decoder, unit) for removed in heads)
    )
    if not fits:
        raise ValueError(
            f"history: {entry} does not fit this model's {n} layers of {decoder.kv_heads} key/value groups "
            f"of {decoder.heads // decoder.kv_heads} query heads and {width} FFN channels"
        )
    return heads, channels


def _fits_layers(per_layer: object, layers: int, size: int) -> bool:
    """One list per layer, all of the same length, of distinct indices below ``size`` (never all of them)."""
    if not isinstance(per_layer, list) or len(per_layer) != layers:
        return False
    lists = [units for units in per_layer if isinstance(units, list)]
    return (
        len(lists) == layers
        and len({len(units) for units in lists}) == 1
        and all(len(set(units)) == len(units) < size for units in lists)
        and all(isinstance(u, int) and 0 <= u < size for units in lists for u in units)
    )


def _fits_groups(removed: list[int], decoder: Decoder, head_unit: str) -> bool:
    """``groups``: the query heads of whole key/value groups; ``heads``: as many from every group."""
    per_group = decoder.heads // decoder.kv_heads
    counts = torch.bincount(torch.tensor(removed, dtype=torch.long) // per_group, minlength=decoder.kv_heads)
    if head_unit == "groups":
        return bool(((counts == 0) | (counts == per_group)).all())
    return bool((counts == counts[0]).all())


def _complement(removed: list[int], size: int) -> torch.Tensor:
    gone = set(removed)
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)


def _plain(entry: dict) -> dict:
    """A copy of an entry made of plain lists (nothing shared with the caller's)."""
    return {
        "head_unit": entry["head_unit"],
        "heads": [list(units) for units in entry["heads"]],
        "channels": [list(units) for units in entry["channels"]],
    }

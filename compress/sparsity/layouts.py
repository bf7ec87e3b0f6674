"""Structured pruning in rounds behind one interface, for the two layouts it knows.

- `EncoderPruning`: BERT-style encoders (``attention.self.query/key/value``, ``intermediate.dense``),
  through torch-pruning (`compress.sparsity.structured`): whole attention heads and FFN channels,
  ``magnitude`` or ``taylor`` importance, per layer or across layers; LoRA is merged, then restarts.
- `DecoderPruning`: Llama-family causal LMs (Llama, SmolLM2, Mistral, Qwen2/3; `compress.sparsity.llm`):
  whole key/value groups or query heads within every group, and FFN channels, by ``activation``
  importance on the batch about to be trained; every layer keeps the same widths (a stock config has one
  of each) and the model stays a stock Hugging Face model. Adapters are refused.

`structured_pruner` picks the one that fits a model and checks the settings against it;
`restore_pruning_history` rebuilds the pruned shapes of either from a saved history. Both histories are
plain data (JSON- and ``weights_only``-safe), kept on the model object as it is pruned.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3, head_dim=8))
    >>> pruner = structured_pruner(model)
    >>> original = pruner.original(model)
    >>> plan = pruner.plan(model, 0.5, 0.5, {"input_ids": torch.randint(0, 64, (2, 8))}, original)
    >>> pruner.describe(pruner.replay(model, plan))
    '2 key/value groups of 2 query heads and 32 FFN channels per layer'
    >>> fresh = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3, head_dim=8))
    >>> restore_pruning_history(fresh, pruner.applied(model)).config.num_attention_heads
    4
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor, nn

from compress.sparsity.llm.decoder import decoder_of
from compress.sparsity.llm.history import (
    DecoderStructure,
    applied_decoder_history,
    check_no_adapters,
    decoder_structure,
    original_decoder_structure,
    replay_decoder_history,
    restore_decoder_history,
)
from compress.sparsity.llm.prune import HeadUnit
from compress.sparsity.llm.rounds import check_decoder_round, decoder_removal_counts, plan_decoder_round
from compress.sparsity.structured import (
    IMPORTANCE,
    Structure,
    applied_history,
    encoder_blocks,
    find_prunable_model,
    original_structure,
    plan_pruning,
    removal_counts,
    replay_history,
    restore_history,
    structure_of,
)

ImportanceChoice = Literal["magnitude", "taylor", "activation"]
IMPORTANCE_CHOICES = ("magnitude", "taylor", "activation")
HEAD_UNITS = ("groups", "heads")


class EncoderPruning:
    """Rounds of torch-pruning on a BERT-style encoder (`compress.sparsity.structured`)."""

    def __init__(self, importance: ImportanceChoice | None, head_unit: HeadUnit, uniform_per_layer: bool):
        if importance not in (None, *IMPORTANCE):
            raise ValueError(
                f"importance: {importance!r} ranks Llama-family decoders only; a BERT-style encoder is "
                f"ranked by torch-pruning: use one of {sorted(IMPORTANCE)} (default 'magnitude')"
            )
        if head_unit != "groups":
            raise ValueError(
                f"head_unit: {head_unit!r} (query heads within key/value groups) is for Llama-family "
                "decoders; each head of a BERT-style encoder has its own keys and values and goes whole: "
                "use head_unit='groups'"
            )
        self.importance, self.uniform_per_layer = importance or "magnitude", uniform_per_layer

    def check(self, model: nn.Module, head_ratio: float, ffn_ratio: float, shares: list[float]) -> None:
        """Nothing to check beyond what planning checks (adapters, the BERT-style layers)."""

    original = staticmethod(original_structure)
    structure = staticmethod(structure_of)
    applied = staticmethod(applied_history)

    def removes_something(self, model: nn.Module, head_ratio: float, ffn_ratio: float, of: Structure) -> bool:
        heads, channels = removal_counts(
            structure_of(model), head_ratio, ffn_ratio, self.uniform_per_layer, of
        )
        return any(heads) or any(channels)

    def plan(self, model: nn.Module, head_ratio: float, ffn_ratio: float, batch: Any, of: Structure):
        """The history entries of one round, ranked by torch-pruning (``taylor``: on ``batch``)."""
        return plan_pruning(
            model,
            head_ratio,
            ffn_ratio,
            self.importance,
            batch=_labelled_batch(batch) if self.importance == "taylor" else None,
            uniform_per_layer=self.uniform_per_layer,
            of=of,
        )

    @staticmethod
    def replay(model: nn.Module, plan: list[dict]) -> Structure:
        replay_history(model, plan)
        return structure_of(model)

    @staticmethod
    def describe(structure: Structure) -> str:
        return f"layers with heads {structure.heads} and channels {structure.channels}"


class DecoderPruning:
    """Rounds of width pruning on a Llama-family decoder (`compress.sparsity.llm`)."""

    def __init__(self, importance: ImportanceChoice | None, head_unit: HeadUnit, uniform_per_layer: bool):
        if importance not in (None, "activation"):
            raise ValueError(
                f"importance: {importance!r} ranks BERT-style encoders with torch-pruning; a Llama-family "
                "decoder is ranked by its activations on the batch about to be trained (Minitron): use "
                "importance='activation' (or leave it unset)"
            )
        if not uniform_per_layer:
            raise ValueError(
                "uniform_per_layer: False gives layers different widths, which a stock Llama-family config "
                "(one intermediate_size, one head count) cannot describe; use uniform_per_layer=True"
            )
        self.head_unit = head_unit

    def check(self, model: nn.Module, head_ratio: float, ffn_ratio: float, shares: list[float]) -> None:
        """No adapters, and every round leaves a shape the model's config class reloads."""
        check_no_adapters(model)
        of = original_decoder_structure(model)
        for k, share in enumerate(shares, start=1):
            try:
                check_decoder_round(model, head_ratio * share, ffn_ratio * share, self.head_unit, of)
            except ValueError as error:
                raise ValueError(
                    f"head_ratio/ffn_ratio: round {k}/{len(shares)} with head_unit={self.head_unit!r} would "
                    f"leave a shape the model's config refuses. {error}"
                ) from error

    original = staticmethod(original_decoder_structure)
    structure = staticmethod(decoder_structure)
    applied = staticmethod(applied_decoder_history)

    def removes_something(
        self, model: nn.Module, head_ratio: float, ffn_ratio: float, of: DecoderStructure
    ) -> bool:
        now = decoder_structure(model)
        return any(decoder_removal_counts(now, head_ratio, ffn_ratio, self.head_unit, of))

    def plan(self, model: nn.Module, head_ratio: float, ffn_ratio: float, batch: Any, of: DecoderStructure):
        """The history entry of one round, ranked by activation importance on ``batch``."""
        return plan_decoder_round(model, head_ratio, ffn_ratio, self.head_unit, batch, of)

    @staticmethod
    def replay(model: nn.Module, plan: list[dict]) -> DecoderStructure:
        replay_decoder_history(model, plan)
        return decoder_structure(model)

    @staticmethod
    def describe(structure: DecoderStructure) -> str:
        return (
            f"{structure.groups} key/value groups of {structure.heads_per_group} query heads and "
            f"{structure.channels} FFN channels per layer"
        )


StructuredPruner = EncoderPruning | DecoderPruning


def structured_pruner(
    model: nn.Module,
    importance: ImportanceChoice | None = None,
    head_unit: HeadUnit = "groups",
    uniform_per_layer: bool = True,
) -> StructuredPruner:
    """The pruner for the layout of ``model``, with the settings checked against it.

    Args:
        model: a BERT-style encoder or a Llama-family ``*ForCausalLM``, or a module holding one (see
            `find_prunable_model`); its methods take that Hugging Face model.
        importance: ``magnitude`` or ``taylor`` (encoders; default ``magnitude``), ``activation``
            (decoders, their only and default choice).
        head_unit: ``groups`` (default): whole key/value groups, which for an encoder are its heads;
            ``heads``: query heads within every group (decoders only).
        uniform_per_layer: every layer keeps the same widths; ``False`` is for encoders only.
    """
    if importance not in (None, *IMPORTANCE_CHOICES):
        raise ValueError(f"importance: {importance!r} must be one of {IMPORTANCE_CHOICES} or None")
    if head_unit not in HEAD_UNITS:
        raise ValueError(f"head_unit: {head_unit!r} must be one of {HEAD_UNITS}")
    model = find_prunable_model(model)
    if is_decoder(model):
        return DecoderPruning(importance, head_unit, uniform_per_layer)
    if not encoder_blocks(model):
        raise ValueError(
            f"module: {type(model).__name__} is neither a BERT-style encoder (layers with "
            "attention.self.query/key/value and intermediate.dense) nor a Llama-family causal LM "
            "(model.model.layers with self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj)"
        )
    return EncoderPruning(importance, head_unit, uniform_per_layer)


def restore_pruning_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Brings the Hugging Face model in ``model`` to a saved history of either layout; returns ``model``."""
    pruned = find_prunable_model(model)
    if is_decoder(pruned):
        restore_decoder_history(pruned, history)
    else:
        restore_history(pruned, history)
    return model


def is_decoder(model: nn.Module) -> bool:
    """Whether ``model`` has the Llama-family layout (`decoder_of`)."""
    try:
        decoder_of(model)
    except TypeError:
        return False
    return True


def _labelled_batch(batch: Any) -> Mapping[str, Tensor]:
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"importance: 'taylor' needs dict batches with input_ids and labels, got {type(batch).__name__}; "
            "use importance='magnitude'"
        )
    return batch

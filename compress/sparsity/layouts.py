"""Structured pruning in rounds behind one interface, for the three layouts it knows.

- `EncoderPruning`: BERT-style encoders (``attention.self.query/key/value``, ``intermediate.dense``),
  through torch-pruning (`compress.sparsity.structured`): whole attention heads and FFN channels,
  ``magnitude`` or ``taylor`` importance, per layer or across layers; LoRA is merged, then restarts.
- `DecoderPruning`: Llama-family causal LMs (Llama, SmolLM2, Mistral, Qwen2/3; `compress.sparsity.llm`):
  whole key/value groups or query heads within every group, and FFN channels, by ``activation``
  importance on the batch about to be trained; every layer keeps the same widths (a stock config has one
  of each) and the model stays a stock Hugging Face model. Adapters are refused.
- `ChannelPruning` (generic): any other network torch-pruning can trace
  (`compress.sparsity.structured.channels`): output channels of Conv layers and hidden units of Linear
  layers, with the layers that consume them, by group magnitude or by Taylor importance on the gradients
  of the training loss (``ranks_by_gradients``: the round runs right before an optimizer step), traced on
  the batch being trained. The output layers never shrink; vanilla LoRA shrinks with its base layers.

`structured_pruner` picks the one that fits a model and checks the settings against it (`check_settings`:
``head_ratio``/``ffn_ratio`` for the first two, ``channel_ratio`` for the generic one);
`restore_pruning_history` rebuilds the pruned shapes of any of them from a saved history. The histories are
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

import math
from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor, nn
from transformers import PreTrainedModel

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
    EPS,
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
from compress.sparsity.structured.channels import is_channel_history, restore_channel_history
from compress.sparsity.structured.channels.pruner import ChannelPruning
from compress.sparsity.structured.root import LOOKED_FOR, NEITHER_LAYOUT, found_layers, hugging_face_models
from compress.sparsity.targets import select_targets

ImportanceChoice = Literal["magnitude", "taylor", "activation"]
IMPORTANCE_CHOICES = ("magnitude", "taylor", "activation")
HEAD_UNITS = ("groups", "heads")
HF_SETTINGS = ("head_ratio", "ffn_ratio")
SETTING_LAYOUTS = {
    "head_ratio": "BERT-style encoders and Llama-family decoders",
    "ffn_ratio": "BERT-style encoders and Llama-family decoders",
    "channel_ratio": "the generic layout (Conv/Linear channels of a network with neither of those layouts)",
}


class EncoderPruning:
    """Rounds of torch-pruning on a BERT-style encoder (`compress.sparsity.structured`)."""

    layout = "BERT-style encoder"
    settings = HF_SETTINGS
    ranks_by_gradients = False  # taylor computes its own gradients, on the batch about to be trained

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

    def check_inputs(self, model: nn.Module, head_ratio: float, ffn_ratio: float, batch: Any, of: Structure):
        """Nothing to check on a batch: encoders are traced on token ids of their own."""

    def prune(self, model: nn.Module, head_ratio: float, ffn_ratio: float, batch: Any, of: Structure) -> bool:
        """One round: `plan`, then `replay`; whether anything was removed."""
        return _plan_then_replay(self, model, head_ratio, ffn_ratio, batch, of)

    @staticmethod
    def replay(model: nn.Module, plan: list[dict]) -> Structure:
        replay_history(model, plan)
        return structure_of(model)

    @staticmethod
    def describe(structure: Structure) -> str:
        return f"layers with heads {structure.heads} and channels {structure.channels}"

    @staticmethod
    def nothing_hint(head_ratio: float, ffn_ratio: float, of: Structure) -> str:
        return "raise a ratio"


class DecoderPruning:
    """Rounds of width pruning on a Llama-family decoder (`compress.sparsity.llm`)."""

    layout = "Llama-family decoder"
    settings = HF_SETTINGS
    ranks_by_gradients = False

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

    def check_inputs(self, model: nn.Module, head_ratio: float, ffn_ratio: float, batch: Any, of: Any):
        """Nothing to check ahead: each round reads ``input_ids`` from its own batch."""

    def prune(self, model: nn.Module, head_ratio: float, ffn_ratio: float, batch: Any, of: Any) -> bool:
        """One round: `plan`, then `replay`; whether anything was removed."""
        return _plan_then_replay(self, model, head_ratio, ffn_ratio, batch, of)

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

    def nothing_hint(self, head_ratio: float, ffn_ratio: float, of: DecoderStructure) -> str:
        if self.head_unit == "groups" and head_ratio and not math.floor(head_ratio * of.groups + EPS):
            need = (
                f"head_ratio >= {1 / of.groups:.3g} removes one" if of.groups > 1 else "no head_ratio < 1 can"
            )
            return (
                f"head_ratio counts whole key/value groups (head_unit='groups'): of {of.groups}, {need}; "
                "head_unit='heads' removes query heads within every group instead"
            )
        return "raise a ratio"


StructuredPruner = EncoderPruning | DecoderPruning | ChannelPruning


def structured_pruner(
    model: nn.Module,
    importance: ImportanceChoice | None = None,
    head_unit: HeadUnit = "groups",
    uniform_per_layer: bool = True,
) -> StructuredPruner:
    """The pruner for the layout of ``model``, with the settings checked against it.

    Args:
        model: a BERT-style encoder or a Llama-family ``*ForCausalLM``, or a module holding one (see
            `find_prunable_model`); its methods take that Hugging Face model. Any other network of
            Conv/Linear layers gets the generic layout, whose methods take ``model`` itself (or the single
            Hugging Face model in it): pass the module `pruning_root` gives.
        importance: ``magnitude`` or ``taylor`` (encoders and the generic layout; default ``magnitude``),
            ``activation`` (decoders, their only and default choice).
        head_unit: ``groups`` (default): whole key/value groups, which for an encoder are its heads;
            ``heads``: query heads within every group (decoders only).
        uniform_per_layer: every layer keeps the same widths; ``False`` is for encoders only.
    """
    if importance not in (None, *IMPORTANCE_CHOICES):
        raise ValueError(f"importance: {importance!r} must be one of {IMPORTANCE_CHOICES} or None")
    if head_unit not in HEAD_UNITS:
        raise ValueError(f"head_unit: {head_unit!r} must be one of {HEAD_UNITS}")
    found = model if isinstance(model, PreTrainedModel) else _single(hugging_face_models(model))
    if found is not None and is_decoder(found):
        return DecoderPruning(importance, head_unit, uniform_per_layer)
    if found is not None and encoder_blocks(found):
        return EncoderPruning(importance, head_unit, uniform_per_layer)
    network = model if found is None else found
    if select_targets(network):
        return ChannelPruning(importance, head_unit, uniform_per_layer)
    name = type(network).__name__
    raise ValueError(
        f"module: looked for {LOOKED_FOR} in {name}; found: {name} {NEITHER_LAYOUT}, and it holds "
        f"{found_layers(network)}"
    )


def check_settings(pruner: StructuredPruner, model: nn.Module, ratios: Mapping[str, float]) -> None:
    """Refuses a ratio set for another layout than the one ``pruner`` found in ``model``."""
    for setting, ratio in ratios.items():
        if ratio and setting not in pruner.settings:
            takes = " and ".join(pruner.settings)
            raise ValueError(
                f"{setting}: {ratio} is for {SETTING_LAYOUTS[setting]}, but {type(model).__name__} is a "
                f"{pruner.layout}, pruned by {takes}: set {'that' if len(pruner.settings) == 1 else 'those'} "
                f"instead (and {setting}=0)"
            )


def restore_pruning_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Brings ``model`` to a saved history of any layout; returns ``model``.

    For the BERT-style and Llama-family layouts ``model`` is, or holds, the Hugging Face model; a generic
    history names modules within the network that was pruned, so ``model`` is that network (`pruning_root`).
    """
    if not history:
        return model
    if is_channel_history(history):
        restore_channel_history(model, history)
        return model
    pruned = find_prunable_model(model)
    if is_decoder(pruned):
        restore_decoder_history(pruned, history)
    else:
        restore_history(pruned, history)
    return model


def _single(models: dict[str, nn.Module]) -> nn.Module | None:
    return next(iter(models.values())) if len(models) == 1 else None


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


def _plan_then_replay(
    pruner: Any, model: nn.Module, head_ratio: float, ffn_ratio: float, batch: Any, of: Any
):
    """The encoder's and decoder's round: the pruner's `plan`, replayed when it removes anything."""
    plan = pruner.plan(model, head_ratio, ffn_ratio, batch, of)
    if plan:
        pruner.replay(model, plan)
    return bool(plan)

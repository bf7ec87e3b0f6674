"""Structured pruning of BERT-style encoders: whole attention heads and FFN channels are removed.

torch-pruning's `DependencyGraph` finds what shrinks together (query/key/value outputs with the attention
output's input; the intermediate outputs with the FFN output's input), so the model gets smaller and faster.
The hidden size never changes, so embeddings, norms, pooler and classifier keep their shapes. Which layers
may be pruned follows `select_targets`: never a teacher, LoRA/adapter weights or the classification head.

Pruning is a *plan* (`plan_pruning`: which heads and channels go, ranked by torch-pruning's importance) and
its application (`replay_history`). A plan, or the history of several, is plain data (JSON- and
``weights_only``-safe); indices count within the layer as it was when the entry was applied::

    [{"layer": 1, "heads": [0, 3], "channels": [5, 17, ...]}, ...]

Replaying a history on a fresh, unpruned copy rebuilds the shapes, so the pruned ``state_dict`` loads.

LoRA (peft): adapters are merged into their base weights first (`merge_lora_into_base`), so importance sees
the weights the model computes with; then each restarts from zero (``lora_B`` zeroed, ``lora_A`` kept, the
layer unmerged): the function is unchanged and the adapters keep training. torch-pruning traces the live
LoRA branch and slices ``lora_A``/``lora_B`` with the base layer. Only vanilla LoRA on linear layers.

Saving: transformers 5 has no ``pruned_heads`` (head size = hidden_size / num_attention_heads), so only a
model with all its heads and equal FFN widths is a stock Hugging Face folder: see `check_stock_loadable`.

Modules: `blocks` (the model to prune and its BERT-style layers, the architecture-specific part), `counts`
(how many units go), `planning` (which ones: torch-pruning importance), `history` (replay and restore),
`lora` (adapters under pruning), `tracing` (what torch-pruning traces) and `export_check`.

Example:
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=4, intermediate_size=64))
    >>> history = prune_structured(model, head_ratio=0.5, ffn_ratio=0.25)
    >>> structure_of(model)
    Structure(heads=[2, 2], channels=[48, 48])
"""

from compress.sparsity.structured.blocks import (
    Block,
    Structure,
    encoder_blocks,
    find_prunable_model,
    structure_of,
)
from compress.sparsity.structured.counts import EPS, check_ratio, removal_counts
from compress.sparsity.structured.export_check import check_stock_loadable
from compress.sparsity.structured.history import (
    HISTORY_ATTRIBUTE,
    applied_history,
    original_structure,
    replay_history,
    restore_history,
)
from compress.sparsity.structured.planning import IMPORTANCE, ImportanceName, plan_pruning, prune_structured
from compress.sparsity.structured.tracing import example_inputs

__all__ = [
    "EPS",
    "HISTORY_ATTRIBUTE",
    "IMPORTANCE",
    "Block",
    "ImportanceName",
    "Structure",
    "applied_history",
    "check_ratio",
    "check_stock_loadable",
    "encoder_blocks",
    "example_inputs",
    "find_prunable_model",
    "original_structure",
    "plan_pruning",
    "prune_structured",
    "removal_counts",
    "replay_history",
    "restore_history",
    "structure_of",
]

"""Sparsity in plain torch: target selection, schedules, magnitude and N:M masks, L1 / group lasso,
channel groups (torch-pruning), structured pruning, the sparsity-preserving LoRA merge, and LLM pruning
(`prune_llm`: depth and width; `prune_oneshot`: Wanda / SparseGPT / magnitude).

The Lightning side lives in `callbacks/` (`L1Sparsity`, `MagnitudePruning`, `StructuredPruning`).
"""

from compress.sparsity.llm import llm_importance, prune_llm, prune_oneshot
from compress.sparsity.magnitude import magnitude_masks, nm_mask, sparsity_of
from compress.sparsity.merge import merge_lora_into_base, merge_lora_keep_sparsity
from compress.sparsity.roles import register_teacher, trained_model
from compress.sparsity.schedule import CubicSparsitySchedule
from compress.sparsity.targets import select_targets

__all__ = [
    "CubicSparsitySchedule",
    "llm_importance",
    "magnitude_masks",
    "merge_lora_into_base",
    "merge_lora_keep_sparsity",
    "nm_mask",
    "prune_llm",
    "prune_oneshot",
    "register_teacher",
    "select_targets",
    "sparsity_of",
    "trained_model",
]

"""Sparsity in plain torch: target selection, schedules, magnitude and N:M masks, L1 / group lasso,
channel groups (torch-pruning), structured pruning and the sparsity-preserving LoRA merge.

The Lightning side lives in `callbacks/` (`L1Sparsity`, `MagnitudePruning`, `StructuredPruning`).
"""

from compress.sparsity.magnitude import magnitude_masks, nm_mask, sparsity_of
from compress.sparsity.merge import merge_lora_into_base, merge_lora_keep_sparsity
from compress.sparsity.schedule import CubicSparsitySchedule
from compress.sparsity.targets import DEFAULT_EXCLUDE, select_targets

__all__ = [
    "DEFAULT_EXCLUDE",
    "CubicSparsitySchedule",
    "magnitude_masks",
    "merge_lora_into_base",
    "merge_lora_keep_sparsity",
    "nm_mask",
    "select_targets",
    "sparsity_of",
]

"""Keep a pruned model's zeros at zero while it trains: recovery after one-shot pruning.

`compress.sparsity.prune_oneshot` (Wanda, SparseGPT, magnitude) or ``compress prune`` leaves weights that
are exactly zero. Fine-tuning or distilling the pruned model would revive them after one optimizer step;
`KeepSparsity` records each target weight's non-zero pattern when training starts (or takes the masks
`prune_oneshot` returned), multiplies it back in after every optimizer step, and saves the masks in its
own state, so a resumed run keeps the same ones. Targets follow `compress.sparsity.targets` (never the
teacher, LoRA/adapter weights or the output head); under LoRA the frozen base weights keep their zeros and
`merge_lora_keep_sparsity` keeps them through the merge.

Example:
    >>> from lightning.pytorch import Trainer
    >>> trainer = Trainer(callbacks=[KeepSparsity()], logger=False, enable_progress_bar=False)
    >>> type(trainer.callbacks[0]).__name__
    'KeepSparsity'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from compress.sparsity.magnitude import apply_masks, mask_mismatch, sparsity_of
from compress.sparsity.targets import Where, resolve_targets

from .exact_resume import warn_unless_exact_resume


class KeepSparsity(Callback):
    """Hold pruned (zero) weights at zero through training; masks resume exactly.

    Args:
        masks: keep-masks by parameter name as `prune_oneshot` returns them (``model.layers.0...weight``);
            matched against the trained module's parameter names by suffix. Default: each target weight's
            non-zero pattern when training starts.
        targets, exclude, where: which weights (`compress.sparsity.targets`): by default every Linear/Conv
            weight except the teacher, adapters/LoRA and the output layers, recognised by structure.
    """

    def __init__(
        self,
        masks: dict[str, torch.Tensor] | None = None,
        targets: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        where: Where | None = None,
    ) -> None:
        self.given = masks
        self.targets_given, self.exclude, self.where = targets, exclude, where
        self.masks: dict[str, torch.Tensor] = {}
        self.targets: dict[str, nn.Module] = {}

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        found = resolve_targets(pl_module, self.targets_given, self.exclude, self.where, "KeepSparsity")
        warn_unless_exact_resume(trainer, "KeepSparsity")
        self.targets = {f"{name}.weight": module for name, module in found.items()}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.masks:  # not restored from a checkpoint
            self.masks = self._given_masks() if self.given is not None else self._zero_patterns()
        self._check_masks()
        self.apply_masks()
        rank_zero_info(
            f"KeepSparsity: {len(self.masks)} tensors held at sparsity {sparsity_of(self.masks):.4f}"
        )

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.apply_masks()

    def apply_masks(self) -> None:
        """Multiply the masks into the target weights."""
        apply_masks(self.masks, self.targets)

    def _zero_patterns(self) -> dict[str, torch.Tensor]:
        masks = {name: m.weight.detach() != 0 for name, m in self.targets.items()}
        masks = {name: mask for name, mask in masks.items() if not bool(mask.all())}
        if not masks:
            raise ValueError(
                "KeepSparsity: none of the target weights has a zero, so there is no sparsity to keep. Prune "
                "first (compress.sparsity.prune_oneshot or `compress prune`), or pass masks=, or use "
                "MagnitudePruning to prune while training."
            )
        return masks

    def _given_masks(self) -> dict[str, torch.Tensor]:
        chosen = {}
        for key, mask in self.given.items():
            matches = [name for name in self.targets if name == key or name.endswith(f".{key}")]
            if len(matches) != 1:
                found = "no target" if not matches else f"{len(matches)} targets ({', '.join(matches[:3])})"
                raise ValueError(
                    f"KeepSparsity: mask {key!r} matches {found} of the trained module; masks must name "
                    "the pruned model's parameters (as prune_oneshot returns them), inside the targets."
                )
            chosen[matches[0]] = mask.bool()
        return chosen

    def _check_masks(self) -> None:
        mismatch = mask_mismatch(self.masks, self.targets)
        if mismatch is not None:
            name, shape, found = mismatch
            raise ValueError(
                f"KeepSparsity: mask for {name!r} has shape {shape} but the weight is "
                f"{found}; the masks (or the checkpoint) come from another model or target rule."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"masks": {name: mask.cpu() for name, mask in self.masks.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = dict(state_dict["masks"])

"""Gradual magnitude pruning as a Lightning callback: masks it owns, checkpoints that stay plain.

Unlike Lightning's `ModelPruning` (built on `torch.nn.utils.prune`), no ``weight_orig``/``weight_mask``
parametrisation is installed: the callback holds the masks, multiplies them into the weights after every
optimizer step, and saves them in its own ``state_dict``. Checkpoints therefore contain ordinary (masked)
``weight`` tensors, ``load_from_checkpoint`` works on them, and ``fit(ckpt_path=...)`` continues with the
same masks and schedule as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from compress.sparsity.magnitude import (
    Scope,
    apply_masks,
    magnitude_masks,
    mask_mismatch,
    nm_mask,
    parse_pattern,
    sparsity_of,
)
from compress.sparsity.schedule import CubicSparsitySchedule
from compress.sparsity.targets import Where, describe_targets, resolve_targets

from .exact_resume import warn_unless_exact_resume


class MagnitudePruning(Callback):
    """Prune the smallest weights on a cubic schedule (Zhu & Gupta), per optimizer step.

    Args:
        target_sparsity: final fraction of zeros over the targets, in [0, 1). Default 0.5, or ``1 − N/M``
            with an ``N:M`` pattern.
        initial_sparsity: fraction pruned at ``start_step``.
        start_step: optimizer step of the first pruning (0: before the first step).
        end_step: step where the target is reached; default: 75% of the run's optimizer steps, which
            leaves a quarter of training to recover.
        frequency: recompute masks every this many optimizer steps.
        scope: ``"global"`` ranks all target weights together; ``"layer"`` gives each tensor the same
            sparsity.
        pattern: ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``): at most N non-zeros in every M consecutive
            input weights, applied once at ``start_step`` and kept.
        targets, exclude, where: which weights (`compress.sparsity.targets`): by default every Linear/Conv
            weight except the teacher, adapters/LoRA and the output layers, recognised by structure;
            ``targets=[patterns]`` chooses exactly, ``exclude=[patterns]`` drops.
        rewind_step: lottery-ticket rewinding, off by default: the weights seen after this step are stored
            and, once the target is reached, the surviving weights are reset to them.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[MagnitudePruning(target_sparsity=0.5, end_step=200, frequency=20)])
    """

    def __init__(
        self,
        target_sparsity: float | None = None,
        initial_sparsity: float = 0.0,
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 100,
        scope: Scope = "global",
        pattern: str = "unstructured",
        targets: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        where: Where | None = None,
        rewind_step: int | None = None,
    ) -> None:
        self.nm = parse_pattern(pattern)
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}.")
        target_sparsity = self._target_for_pattern(target_sparsity, pattern)
        self.pattern, self.scope = pattern, scope
        self.schedule_args = dict(
            target_sparsity=target_sparsity,
            initial_sparsity=target_sparsity if self.nm else initial_sparsity,
            start_step=start_step,
            frequency=frequency,
        )
        # Validate now (before training), with a provisional end step.
        CubicSparsitySchedule(**self.schedule_args, end_step=start_step if end_step is None else end_step)
        self.end_step = start_step if self.nm else end_step
        self.targets_given, self.exclude, self.where = targets, exclude, where
        self.rewind_step = rewind_step
        self.masks: dict[str, torch.Tensor] = {}
        self.last_step = -1
        self.rewind_weights: dict[str, torch.Tensor] | None = None
        self.targets: dict[str, nn.Module] = {}

    def _target_for_pattern(self, target: float | None, pattern: str) -> float:
        if self.nm is None:
            return 0.5 if target is None else target
        implied = 1.0 - self.nm[0] / self.nm[1]
        if target is not None and abs(target - implied) > 1e-9:
            raise ValueError(
                f"target_sparsity={target} contradicts pattern={pattern!r}, which gives {implied:.3f}; "
                "leave target_sparsity unset with an N:M pattern."
            )
        return implied

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(pattern=self.pattern, **self.schedule_args)

    @property
    def schedule(self) -> CubicSparsitySchedule:
        return CubicSparsitySchedule(**self.schedule_args, end_step=self.end_step)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        found = resolve_targets(pl_module, self.targets_given, self.exclude, self.where, "MagnitudePruning")
        warn_unless_exact_resume(trainer, "MagnitudePruning")
        self.targets = {f"{name}.weight": module for name, module in found.items()}
        if self.nm:
            _check_nm_sizes(self.targets, self.pattern, self.nm[1])
        rank_zero_info(f"MagnitudePruning targets {describe_targets(found)}")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.end_step is None:
            planned = int(0.75 * trainer.estimated_stepping_batches)
            self.end_step = max(self.schedule_args["start_step"], planned)
        self._check_masks()
        self._step(trainer)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._step(trainer)
        if self.masks:
            pl_module.log("pruning/sparsity", self.sparsity)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.apply_masks()
        rank_zero_info(f"MagnitudePruning: final sparsity {self.sparsity:.4f} over {len(self.masks)} tensors")

    @property
    def sparsity(self) -> float:
        """Current fraction of pruned weights over the targets."""
        return sparsity_of(self.masks)

    def _step(self, trainer: Trainer) -> None:
        step = trainer.global_step
        if step == self.rewind_step and self.rewind_weights is None:
            self.rewind_weights = {name: m.weight.detach().cpu().clone() for name, m in self.targets.items()}
        if step != self.last_step and self.schedule.is_pruning_step(step):
            self._prune(trainer, step)
        self.apply_masks()

    def _prune(self, trainer: Trainer, step: int) -> None:
        weights = {name: module.weight for name, module in self.targets.items()}
        if self.nm:
            masks = {name: nm_mask(w, *self.nm, self.masks.get(name)) for name, w in weights.items()}
        else:
            sparsity = self.schedule.sparsity_at(step)
            masks = magnitude_masks(weights, sparsity, self.scope, previous=self.masks or None)
        # Weights agree across DDP ranks, but a tie broken differently must not split the model.
        self.masks = trainer.strategy.broadcast(masks, src=0)
        self.last_step = step
        if self.rewind_weights is not None and step == self.end_step:
            self._rewind()

    def apply_masks(self) -> None:
        """Multiply the masks into the target weights (pruned weights are exactly zero afterwards)."""
        apply_masks(self.masks, self.targets)

    @torch.no_grad()
    def _rewind(self) -> None:
        for name, module in self.targets.items():
            module.weight.copy_(self.rewind_weights[name].to(module.weight.device))
        rank_zero_info(f"MagnitudePruning: rewound surviving weights to step {self.rewind_step}")

    def _check_masks(self) -> None:
        mismatch = mask_mismatch(self.masks, self.targets)
        if mismatch is not None:
            name, shape, found = mismatch
            raise ValueError(
                f"MagnitudePruning: saved mask for {name!r} has shape {shape} but the weight "
                f"is {found}; the checkpoint comes from another model or target rule (targets/exclude)."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {name: mask.cpu() for name, mask in self.masks.items()},
            "last_step": self.last_step,
            "end_step": self.end_step,
            "rewind_weights": self.rewind_weights,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = dict(state_dict["masks"])
        self.last_step = state_dict["last_step"]
        self.end_step = state_dict["end_step"]
        self.rewind_weights = state_dict["rewind_weights"]


def _check_nm_sizes(targets: dict[str, nn.Module], pattern: str, m: int) -> None:
    """Every target's input size (a Conv's channels x kernel) must split into groups of ``m``."""
    for name, module in targets.items():
        size, layer = module.weight[0].numel(), name.removesuffix(".weight")
        if size % m:
            raise ValueError(
                f"MagnitudePruning.pattern: {pattern!r} needs each target's input size to be a multiple of "
                f"m={m}, but {layer} has {size}; leave that layer out with exclude=[{layer!r}] or choose "
                "the layers with targets=[...]"
            )

"""The optimizer and learning-rate schedule of a module: fused AdamW with warm-up by default, or your own.

Your own come the LightningCLI way, as ``optimizer`` / ``lr_scheduler`` init args of a module
(``OptimizerCallable`` / ``LRSchedulerCallable``): in YAML a ``class_path`` with ``init_args``, in Python
any callable, e.g. ``lambda params: torch.optim.SGD(params, lr=0.01)``. They are not stored in checkpoints
(pass them again); the defaults are.

Example:
    >>> import torch
    >>> from compress.modules.optim import Optimization
    >>> sgd = Optimization(optimizer=lambda params: torch.optim.SGD(params, lr=0.1, weight_decay=1e-4))
    >>> groups = sgd.optimizer_for(torch.nn.Linear(2, 2).named_parameters()).param_groups
    >>> [g["weight_decay"] for g in groups]  # the optimizer's own decay; none on biases and norms
    [0.0001, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup


@dataclass
class Optimization:
    """How a module's trainable parameters are optimized.

    Args:
        learning_rate: peak learning rate of the default AdamW.
        weight_decay: weight decay of the default AdamW (a given ``optimizer`` keeps its own). Biases
            and norms (parameters of one dimension) never decay.
        warmup_ratio: fraction of the optimizer steps spent warming up linearly (built-in schedules).
        lr_schedule: ``linear`` decay to 0 after warm-up, or ``constant``.
        optimizer: builds the optimizer from the two parameter groups (weights, then biases and norms
            with ``weight_decay=0``); None: fused AdamW with ``learning_rate`` and ``weight_decay``.
        lr_scheduler: builds the schedule from the optimizer, stepped after every optimizer step (count
            its periods in optimizer steps); None: the built-in ``lr_schedule`` with ``warmup_ratio``.
    """

    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    lr_schedule: Literal["linear", "constant"] = "linear"
    optimizer: OptimizerCallable | None = None
    lr_scheduler: LRSchedulerCallable | None = None

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(
                f"model.learning_rate: {self.learning_rate!r} must be > 0 (typical: 5e-5 full, 5e-4 LoRA)"
            )
        if self.weight_decay < 0:
            raise ValueError(f"model.weight_decay: {self.weight_decay!r} must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"model.warmup_ratio: {self.warmup_ratio!r} must be in [0, 1)")

    def configure(self, module, named_parameters):
        """Lightning ``configure_optimizers`` output for the parameters that require grad."""
        optimizer = self.optimizer_for(named_parameters)
        if self.lr_scheduler is not None:
            schedule = self.lr_scheduler(optimizer)
        elif self.warmup_ratio == 0 and self.lr_schedule == "constant":
            return optimizer
        else:
            schedule = self._built_in_schedule(optimizer, module.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_for(self, named_parameters) -> torch.optim.Optimizer:
        """The optimizer over two groups: weights (decayed), then biases and norms (not decayed)."""
        named = [(n, p) for n, p in named_parameters if p.requires_grad]
        weights, flat = [p for _, p in named if p.ndim > 1], [p for _, p in named if p.ndim <= 1]
        if self.optimizer is not None:
            return self.optimizer([{"params": weights}, {"params": flat, "weight_decay": 0.0}])
        groups = [
            {"params": weights, "weight_decay": self.weight_decay},
            {"params": flat, "weight_decay": 0.0},
        ]
        # The fused kernel (CPU and CUDA) makes the same update in one pass over each tensor instead of
        # several; on CPU it shrank the optimizer's share of a 3-layer MiniLM step several-fold.
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for _, p in named)
        return torch.optim.AdamW(groups, lr=self.learning_rate, fused=fused or None)

    def _built_in_schedule(self, optimizer: torch.optim.Optimizer, steps: float):
        total = max(1, int(steps))
        warmup = int(self.warmup_ratio * total)
        if self.lr_schedule == "linear":
            return get_linear_schedule_with_warmup(optimizer, warmup, total)
        return get_constant_schedule_with_warmup(optimizer, warmup)

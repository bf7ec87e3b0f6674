"""Stop training at the first non-finite loss, before it reaches the weights or a checkpoint."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override


class StopOnNonFiniteLoss(Callback):
    """Raises `FloatingPointError` when the training loss is NaN or infinite, before its backward pass.

    No gradient of the bad step is computed and no optimizer step is taken, and checkpoint callbacks run
    after this one, so the last checkpoint on disk is the last good state: resume from it with a lower
    learning rate, gradient clipping, or fixed inputs. compress's own modules add it themselves.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[StopOnNonFiniteLoss()])
    """

    @override
    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if torch.isfinite(loss).all():
            return
        raise FloatingPointError(
            f"training loss is {loss.detach().float().cpu().tolist()} at optimizer step "
            f"{trainer.global_step} (epoch {trainer.current_epoch}); stopped before the backward pass, so "
            "weights and checkpoints are untouched. Resume from the last checkpoint with a lower "
            "learning_rate, gradient_clip_val, or check the batch for empty or broken rows."
        )

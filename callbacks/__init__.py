"""Lightning callbacks that drop into any Trainer, around any LightningModule.

Installed as ``compress.callbacks``. They import the library, never `compress.modules` or the commands.
Available now:

- `Distillation`: knowledge distillation for any LightningModule: the callback owns the frozen teacher
  (folder, alias, module or submodule; never optimized, never in a checkpoint, never pruned) and
  `distillation_loss(self, logits, labels)` in ``training_step`` is the one changed line.
- `GradualUnfreezing`: ULMFiT-style gradual unfreezing, one more layer from the top every few epochs,
  resumable (param groups and scheduler rebuilt before the optimizer state is restored).
- `MagnitudePruning`: gradual (cubic) magnitude pruning, global/per-layer or N:M, masks kept in the
  callback's state so checkpoints stay plain and resume is exact.
- `KeepSparsity`: holds a pruned model's zeros (Wanda, SparseGPT, magnitude one-shot) at zero while it
  recovers; the masks resume exactly.
- `L1Sparsity`: L1 or group-lasso penalty (subgradient or proximal), with a warm-up for its strength.
- `StructuredPruning`: removes attention heads and FFN channels (torch-pruning), once or in rounds;
  optimizers follow the new shapes and a resumed run replays the pruning history before loading weights.
- `ExportOnFitEnd`: writes the trained model as a stock Hugging Face folder (and ONNX / int8) when fit
  ends; an existing folder is refused before training.
- `StopOnNonFiniteLoss`: a NaN/inf training loss stops the run before its backward pass, so the last
  checkpoint is the last good state. compress's own modules add it themselves.
- `ExactResume`: stores the torch/numpy/python RNG states in checkpoints and, on resume, restores them
  and continues an unfinished epoch at its first unseen row, so a resumed run (even one killed mid-epoch)
  ends like an uninterrupted one. compress's own modules add it themselves.

Example:
    >>> from lightning.pytorch import Trainer
    >>> from compress.callbacks import MagnitudePruning, StopOnNonFiniteLoss
    >>> callbacks = [MagnitudePruning(target_sparsity=0.5), StopOnNonFiniteLoss()]
    >>> trainer = Trainer(callbacks=callbacks, logger=False)
    >>> [type(c).__name__ for c in trainer.callbacks][:2]
    ['MagnitudePruning', 'StopOnNonFiniteLoss']
"""

from .distillation import Distillation, distillation_loss
from .exact_resume import ExactResume
from .export_on_fit_end import ExportOnFitEnd
from .gradual_unfreezing import GradualUnfreezing
from .keep_sparsity import KeepSparsity
from .l1_sparsity import L1Sparsity
from .magnitude_pruning import MagnitudePruning
from .stop_on_non_finite_loss import StopOnNonFiniteLoss
from .structured_pruning import StructuredPruning

__all__ = [
    "Distillation",
    "ExactResume",
    "ExportOnFitEnd",
    "GradualUnfreezing",
    "KeepSparsity",
    "L1Sparsity",
    "MagnitudePruning",
    "StopOnNonFiniteLoss",
    "StructuredPruning",
    "distillation_loss",
]

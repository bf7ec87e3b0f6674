"""Lightning callbacks that drop into any Trainer, around any LightningModule.

They import `compress`, never the reverse. Available now:

- `GradualUnfreezing`: ULMFiT-style gradual unfreezing, one more layer from the top every few epochs,
  resumable (param groups and scheduler rebuilt before the optimizer state is restored).
- `RNGState`: stores the torch/numpy/python RNG states in checkpoints so a resumed run draws the
  same random numbers (dropout, augmentation) as an uninterrupted one. compress's own modules add
  it themselves.

Example:
    >>> from lightning.pytorch import Trainer
    >>> from callbacks import RNGState
    >>> trainer = Trainer(callbacks=[RNGState()])  # doctest: +SKIP
"""

from callbacks.gradual_unfreezing import GradualUnfreezing
from compress.modules.rng import RNGState

__all__ = ["GradualUnfreezing", "RNGState"]

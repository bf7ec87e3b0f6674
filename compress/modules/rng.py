"""Random-number-generator state in checkpoints, so a resumed run draws the same dropout masks."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


class RNGState(Callback):
    """Saves the torch/numpy/python RNG states with each checkpoint and restores them on resume.

    Lightning restores weights, optimizer and loop progress but not the global generators; without
    them a resumed run draws other dropout masks than an uninterrupted one. Our modules add this
    callback themselves through ``configure_callbacks``.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[RNGState()])  # doctest: +SKIP
    """

    @property
    def state_key(self) -> str:
        return "RNGState"

    def state_dict(self) -> dict[str, Any]:
        # tensors and plain tuples only, so checkpoints load with torch.load(weights_only=True)
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]
        return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        random.setstate(state_dict["python"])

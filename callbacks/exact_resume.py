"""Exact resume: random-number streams and the position in the epoch's data, restored from checkpoints."""

from __future__ import annotations

import random
import weakref
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from torch.utils.data import RandomSampler

from compress.data import EpochShuffle

from .lightning_internals import batches_done_in_epoch, restart_train_iterator


class ExactResume(Callback):
    """Makes ``fit(ckpt_path=...)`` continue exactly where the checkpointed run was, even mid-epoch.

    Lightning restores weights, optimizer and loop progress, but (2.6) not the global random generators,
    and after a mid-epoch checkpoint it starts the data of the epoch over, in the order of the run's
    first epoch. This callback saves the torch/numpy/python RNG states with each checkpoint and, on
    resume, restores them and points an `EpochShuffle` sampler (``TextClassificationDataModule``'s) at
    the first row the run had not trained on (each rank's own rows under DDP). Other samplers resume
    at the epoch's start (a warning says so). Our modules add this callback themselves through
    ``configure_callbacks``.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[ExactResume()], logger=False)
        >>> trainer.callbacks[0].state_key
        'RNGState'
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RNGState"  # the name of this state in earlier checkpoints

    def state_dict(self) -> dict[str, Any]:
        # tensors and plain tuples only, so checkpoints load with torch.load(weights_only=True)
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]
        return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict
        _set_rng(state_dict)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._loaded = self._loaded, None
        if state is not None:
            _warn_own_generator(trainer)
        if state is not None and _continue_mid_epoch(trainer):
            _set_rng(state)  # rebuilding the data iterators drew from the torch stream


def warn_unless_exact_resume(trainer: Trainer, owner: str) -> None:
    """Stateful callbacks call this in ``setup``: a checkpointing run without `ExactResume` resumes with
    other random numbers and restarts an unfinished epoch, so it would not end as an uninterrupted run."""
    has = any(isinstance(c, ExactResume) for c in trainer.callbacks)
    if has or trainer.checkpoint_callback is None or trainer in _WARNED:
        return
    _WARNED.add(trainer)
    rank_zero_warn(
        f"{owner}: this run writes checkpoints but has no ExactResume callback, so a resumed run draws other "
        "random numbers (dropout, shuffling) and repeats the rows of an unfinished epoch; add "
        "`ExactResume()` to the Trainer's callbacks and give the DataLoader a `compress.data.EpochShuffle` "
        "sampler for a resume that ends as the uninterrupted run (docs/plugin.md, 'Resume')"
    )


_WARNED: weakref.WeakSet[Trainer] = weakref.WeakSet()  # one warning per run, not one per callback


def _warn_own_generator(trainer: Trainer) -> None:
    sampler = getattr(_first_train_loader(trainer), "sampler", None)
    if isinstance(sampler, RandomSampler) and sampler.generator is not None:
        rank_zero_warn(
            "ExactResume: the training DataLoader shuffles with its own `generator`, whose state is not in "
            "the checkpoint: epochs after the resume get other orders than the uninterrupted run; use "
            "`sampler=compress.data.EpochShuffle(len(dataset), seed=..., batch_size=...)` instead"
        )


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])


def _continue_mid_epoch(trainer: Trainer) -> bool:
    """Restart the training data at the first unseen row of a resumed, unfinished epoch."""
    done = batches_done_in_epoch(trainer)
    loader = _first_train_loader(trainer)
    if loader is None or not 0 < done < len(loader):
        return False
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, EpochShuffle):
        rank_zero_warn(
            f"ExactResume: resumed after batch {done} of epoch {trainer.current_epoch}, but the training "
            "sampler cannot skip the rows already seen (not an EpochShuffle): the epoch starts over"
        )
        return False
    sampler.set_epoch(trainer.current_epoch)
    sampler.resume(trainer.current_epoch, done * loader.batch_size)
    restart_train_iterator(trainer)  # Lightning built the iterator before the checkpoint was loaded
    return True


def _first_train_loader(trainer: Trainer) -> Any:
    """The first training DataLoader (of a collection, in Lightning's order), as Lightning prepared it."""
    loaders = trainer.train_dataloader
    if loaders is None:
        return None
    return CombinedLoader(loaders).flattened[0]  # flattening only: this CombinedLoader is never iterated

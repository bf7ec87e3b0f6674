"""The Lightning (2.6) internals that `ExactResume` needs because Lightning has no public way to do it.

Every access to a loop's attributes goes through `resolve`, whose error names the attribute a Lightning
upgrade removed or renamed; ``tests/callbacks/test_lightning_internals.py`` calls each function on a real
Trainer, so an upgrade fails there, by name, before a resumed run silently starts its epoch over.

Example:
    >>> from lightning.pytorch import Trainer
    >>> from compress.callbacks.lightning_internals import batches_done_in_epoch
    >>> batches_done_in_epoch(Trainer(logger=False))  # before fit: no batch trained yet
    0
"""

from __future__ import annotations

from typing import Any

import lightning
from lightning.pytorch import Trainer

DONE_IN_EPOCH = "fit_loop.epoch_loop.batch_progress.current.processed"
DATA_FETCHER = "fit_loop._data_fetcher"
USED = (DONE_IN_EPOCH, DATA_FETCHER)  # every attribute path below, for the test


def resolve(trainer: Trainer, path: str) -> Any:
    """``trainer.<path>``; an AttributeError names the missing part when Lightning no longer has it."""
    value = trainer
    for name in path.split("."):
        if not hasattr(value, name):
            raise AttributeError(
                f"ExactResume reads trainer.{path}, but Lightning {lightning.__version__} has no {name!r} "
                f"there (on {type(value).__name__}); update callbacks/lightning_internals.py"
            )
        value = getattr(value, name)
    return value


def batches_done_in_epoch(trainer: Trainer) -> int:
    """The batches of the current epoch already trained on, as the fit loop restored them from a checkpoint.

    Private because no public property holds the position inside an epoch: ``trainer.global_step``
    counts optimizer steps across epochs (accumulation, several optimizers), and the hooks' ``batch_idx``
    exists only once a batch runs, not when a resumed run starts.
    """
    return resolve(trainer, DONE_IN_EPOCH)


def restart_train_iterator(trainer: Trainer) -> None:
    """Builds the training data iterator again, so it draws from the sampler as it is now.

    Private because Lightning has no public call for it, and it is needed: ``configure_optimizers``
    reading `Trainer.estimated_stepping_batches` runs ``_FitLoop.setup_data``, which builds the iterator
    (``iter(self._data_fetcher)``; DataLoader workers then take their first indices) before the
    checkpoint's loop state is restored; ``setup_data`` does not run again, and
    ``_TrainingEpochLoop.on_run_start`` skips ``iter`` for a resumed epoch. The public route, a loader
    with ``state_dict``/``load_state_dict``, fails in that order too: ``_load_combined_loader_states``
    runs only inside that first ``setup_data``, when nothing is restored yet, so the state is never loaded.
    """
    iter(resolve(trainer, DATA_FETCHER))

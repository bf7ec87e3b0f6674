"""A callback's say on every checkpoint the trainer reads, before the LightningModule's weights see it.

Lightning 2.6 loads the module's weights before any callback state (``restore_model``, then
``restore_callbacks``) and strictly, and ``trainer.ckpt_path`` is set only once the file is read. A callback
that changes what the weights must look like (pruned shapes, a teacher kept out of checkpoints) puts a
`CheckpointIO` in front of the strategy's own: each checkpoint read passes through ``on_read`` first.
The strategy's ``checkpoint_io`` is a public, settable property; this is the only place that sets it.

Example:
    >>> from lightning.pytorch import Trainer
    >>> trainer = Trainer(logger=False, enable_progress_bar=False)
    >>> owner = object()
    >>> read_checkpoints_through(trainer, owner, lambda checkpoint: None)
    >>> type(trainer.strategy.checkpoint_io).__name__
    'ReadingCheckpointIO'
    >>> stop_reading_through(trainer, owner)
    >>> type(trainer.strategy.checkpoint_io).__name__
    'TorchCheckpointIO'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.plugins.io import CheckpointIO
from typing_extensions import override

OnRead = Callable[[dict[str, Any]], None]


def read_checkpoints_through(trainer: pl.Trainer, owner: object, on_read: OnRead) -> None:
    """From now on, every checkpoint ``trainer`` reads goes to ``on_read`` first (once per ``owner``)."""
    io = ReadingCheckpointIO.without(trainer.strategy.checkpoint_io, owner)
    trainer.strategy.checkpoint_io = ReadingCheckpointIO(io, owner, on_read)


def stop_reading_through(trainer: pl.Trainer, owner: object) -> None:
    """Takes ``owner``'s reader out of ``trainer``'s checkpoint IO (wherever it is in a chain)."""
    trainer.strategy.checkpoint_io = ReadingCheckpointIO.without(trainer.strategy.checkpoint_io, owner)


class ReadingCheckpointIO(CheckpointIO):
    """The strategy's checkpoint IO, plus: each checkpoint it reads goes to ``on_read`` first. Saving and
    removing are the wrapped IO's."""

    def __init__(self, inner: CheckpointIO, owner: object, on_read: OnRead) -> None:
        self.inner, self.owner, self.on_read = inner, owner, on_read

    @staticmethod
    def without(io: CheckpointIO, owner: object) -> CheckpointIO:
        """``io`` with the reader of ``owner`` taken out, wherever it is in a chain of readers."""
        if not isinstance(io, ReadingCheckpointIO):
            return io
        if io.owner is owner:
            return io.inner
        io.inner = ReadingCheckpointIO.without(io.inner, owner)
        return io

    @override
    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        checkpoint = self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        self.on_read(checkpoint)
        return checkpoint

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    @override
    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    @override
    def teardown(self) -> None:
        self.inner.teardown()

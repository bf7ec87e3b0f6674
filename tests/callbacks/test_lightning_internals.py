"""The Lightning internals that ExactResume uses (callbacks/lightning_internals.py) exist and do what it
assumes. A Lightning upgrade that renames or changes one fails here, naming the attribute."""

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from compress.callbacks.lightning_internals import (
    USED,
    batches_done_in_epoch,
    resolve,
    restart_train_iterator,
)

ROWS, BATCH = 12, 2


class EagerBatches:
    """Batches of rows ``start``, ``start + 1``, ... listed when the iterator is made, as DataLoader workers
    take their indices; counts the iterators made."""

    def __init__(self) -> None:
        self.start, self.iterators = 0, 0

    def __iter__(self):
        self.iterators += 1
        return iter([[i, i + 1] for i in range(self.start, ROWS, BATCH)])

    def __len__(self) -> int:
        return ROWS // BATCH


class Tiny(LightningModule):
    """Records the rows it trains on; reads ``estimated_stepping_batches`` as compress's modules do."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.batches, self.rows = EagerBatches(), []

    def train_dataloader(self) -> DataLoader:
        data = torch.arange(ROWS, dtype=torch.float32).unsqueeze(1)
        return DataLoader(data, batch_sampler=self.batches)

    def training_step(self, batch, batch_idx):
        self.rows += batch.squeeze(1).int().tolist()
        return self.layer(batch).sum()

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
        steps = self.trainer.estimated_stepping_batches
        return [optimizer], [torch.optim.lr_scheduler.LinearLR(optimizer, total_iters=steps)]


class Probe(Callback):
    def __init__(self, on_start=None) -> None:
        self.on_start, self.at_start, self.done = on_start, None, []

    def on_train_start(self, trainer, pl_module) -> None:
        for path in USED:
            resolve(trainer, path)
        self.at_start = (trainer.current_epoch, batches_done_in_epoch(trainer), pl_module.batches.iterators)
        if self.on_start is not None:
            self.on_start(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.done.append((batch_idx, batches_done_in_epoch(trainer)))


def fit(module, callbacks, root, epochs=2, ckpt_path=None) -> None:
    trainer = Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
    )
    trainer.fit(module, ckpt_path=ckpt_path)


def test_resolve_names_the_missing_attribute():
    with pytest.raises(AttributeError, match=r"trainer\.fit_loop\.no_such_loop.*'no_such_loop'"):
        resolve(Trainer(logger=False), "fit_loop.no_such_loop")


def test_batches_done_counts_this_epochs_batches_and_is_restored_from_a_checkpoint(tmp_path):
    probe = Probe()
    every_8 = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1)
    fit(Tiny(), [probe, every_8], tmp_path)
    assert probe.done == [(i, i + 1) for i in range(ROWS // BATCH)] * 2
    resumed = Probe()  # step 8: batch 2 of epoch 1 done
    fit(Tiny(), [resumed], tmp_path, ckpt_path=str(tmp_path / "epoch=1-step=8.ckpt"))
    assert resumed.at_start[:2] == (1, 2)
    assert resumed.done == [(i, i + 1) for i in range(2, ROWS // BATCH)]


def test_restarted_iterator_draws_from_the_sampler_as_it_is_now(tmp_path):
    def skip_four_rows(trainer, module) -> None:
        module.batches.start = 4
        restart_train_iterator(trainer)

    module, probe = Tiny(), Probe(skip_four_rows)
    fit(module, [probe], tmp_path, epochs=1)
    assert probe.at_start[2] == 1  # Lightning made the iterator before training started (the reason)
    assert module.batches.iterators == 2 and module.rows == list(range(4, ROWS))

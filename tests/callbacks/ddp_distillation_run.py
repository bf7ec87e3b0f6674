"""A user's own LightningModule with `Distillation` + `MagnitudePruning`, under DDP (2 CPU processes, gloo)
or in one process.

Run by test_ddp_pruning.py as ``python -m tests.callbacks.ddp_distillation_run TEACHER CSV TOKENIZER OUT
--devices 2`` and ``--devices 1``. Each rank saves the student's weights, the masks and the teacher's
weights to OUT/user_rank<r>.pt (one process: OUT/user_single.pt), and rank 0 a checkpoint.

The maths is the one of ``ddp_pruning_run`` (its docstring): `EpochShuffle` gives DDP step k the rows of
the single process's step k, 4 rows per rank, every row labelled and no dropout, so the average of the
ranks' KD losses (each a mean over 4 rows) is the single process's mean over 8. The teacher is held by
the callback on each rank, outside the DDP-wrapped module.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from transformers import AutoModelForSequenceClassification

from compress.callbacks import Distillation, MagnitudePruning, distillation_loss
from compress.data import TextClassificationDataModule
from tests.conftest import tiny_bert

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class UserModule(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_bert(num_labels=3, layers=2, seed=1, dropout=0.0)

    def training_step(self, batch, batch_idx):
        logits = self.net(**{k: batch[k] for k in INPUTS if k in batch}).logits
        return distillation_loss(self, logits, batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(teacher: str, csv: str, tokenizer: str, out: str, devices: int = 2) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    module = UserModule()
    teacher_model = AutoModelForSequenceClassification.from_pretrained(
        teacher, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    kd = Distillation(teacher=teacher_model)
    pruning = MagnitudePruning(target_sparsity=0.6, start_step=0, end_step=4, frequency=1)
    data = TextClassificationDataModule(
        source=csv, tokenizer=tokenizer, text_column="review", label_column="sentiment", test_size=8,
        val_size=12, batch_size=8 // devices, max_length=16, seed=0,
    )  # fmt: skip
    trainer = Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=8,
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[kd, pruning],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    name = f"user_rank{trainer.global_rank}" if devices > 1 else "user_single"
    trainer.save_checkpoint(Path(out) / f"{name.replace('rank1', 'rank0')}.ckpt")  # rank 0 writes
    state = {"student": module.net.state_dict(), "masks": pruning.masks, "teacher": kd.teacher.state_dict()}
    torch.save(state, Path(out) / f"{name}.pt")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for field in ("teacher", "csv", "tokenizer", "out"):
        parser.add_argument(field)
    parser.add_argument("--devices", type=int, default=2)
    main(**vars(parser.parse_args()))

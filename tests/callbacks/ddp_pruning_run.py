"""KD + LoRA + L1Sparsity + MagnitudePruning, with DDP on 2 CPU processes (gloo) or in one process.

Run by test_ddp_pruning.py as ``python -m tests.callbacks.ddp_pruning_run TEACHER CSV TOKENIZER OUT
--devices 2`` (DDP) and ``--devices 1`` (one process). After ``fit`` the final model is validated once;
each rank saves its masks, student weights, logged metrics and its rows of the last training epoch to
OUT/rank<r>.pt (one process: OUT/single.pt).

Both modes run the same maths, so the single-process run is a reference for the DDP one:

* Batches. The single process takes ``PER_RANK_BATCH * 2`` rows per step. Under DDP our `EpochShuffle`
  (a DistributedSampler, so Lightning does not wrap and reshuffle it) cuts every global batch of its
  order into one slice per rank: DDP step k trains on the rows of the single process's step k, rank 0 on
  the first half, rank 1 on the second.
* Gradients. DDP averages the per-rank gradients, i.e. it follows ``mean(rank losses)``. That equals the
  single-process loss only when every rank loss is a per-row mean over equally many rows. So: 40 training
  rows (60 - 8 test - 12 validation) = 5 global batches of 8, 4 rows per rank in every step, no padded or
  duplicated rows. KDLoss's hard term is a mean over the *labelled* rows of a batch, and with transfer
  rows (label -100) the ranks hold different counts: `DistillationModule` weights each rank's hard term
  by its share of the labelled rows, so the test runs with ``--transfer-fraction 0.3``.
* Dropout is off (the teacher is loaded without it and the student copies its config): each DDP rank draws
  its own masks (from the same seed on both ranks) for other rows than the single process would.
* Validation: 12 rows, 6 per rank (Lightning's DistributedSampler pads an uneven split with duplicates).
  torchmetrics syncs ``val/acc`` and ``val/f1`` across ranks and ``val/loss`` is logged with ``sync_dist``;
  ``train/*`` are per rank, so each rank saves its own value and the caller averages them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from peft import LoraConfig
from transformers import AutoModelForSequenceClassification

from compress.callbacks import L1Sparsity, MagnitudePruning
from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule
from compress.peft import StudentFromTeacher

PER_RANK_BATCH = 4
PER_RANK_EVAL_BATCH = 6
MAX_STEPS = 8  # 5 steps per epoch: the run crosses into a second epoch (EpochShuffle.set_epoch under DDP)


def main(
    teacher: str,
    csv: str,
    tokenizer: str,
    out: str,
    devices: int = 2,
    transfer_fraction: float = 0.0,
    dropout: float = 0.0,
) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    teacher_model = AutoModelForSequenceClassification.from_pretrained(
        teacher, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
    )
    module = DistillationModule(
        teacher=teacher_model,
        student=StudentFromTeacher(layers=[0, 2]),
        learning_rate=1e-2,
        adapter=LoraConfig(r=4, target_modules=["query", "value"]),
    )
    # Base weights (frozen under LoRA: their masks follow from the initial weights) and the trained LoRA A
    # matrices, whose masks depend on every step so far: they are the ones that can tell DDP from one process.
    pruning = MagnitudePruning(target_sparsity=0.6, start_step=0, end_step=4, frequency=1)
    lora_pruning = MagnitudePruning(
        target_sparsity=0.5,
        start_step=2,
        end_step=6,
        frequency=2,
        scope="layer",
        targets=[r"lora_A"],
        exclude=[r"teacher"],
    )
    l1 = L1Sparsity(strength=1e-3, targets=[r"lora_"], exclude=[r"teacher"])
    global_batch = PER_RANK_BATCH * 2
    data = TextClassificationDataModule(
        source=csv,
        tokenizer=tokenizer,
        text_column="review",
        label_column="sentiment",
        test_size=8,
        val_size=12,
        batch_size=global_batch // devices,
        eval_batch_size=PER_RANK_EVAL_BATCH * 2 // devices,
        max_length=16,
        seed=0,
        transfer_fraction=transfer_fraction,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=MAX_STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        check_val_every_n_epoch=MAX_STEPS,  # no validation during fit: one on the final model below
        num_sanity_val_steps=0,
        callbacks=[l1, pruning, lora_pruning],
    )
    trainer.fit(module, datamodule=data)
    train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    order = list(trainer.train_dataloader.sampler)  # this rank's rows in the last epoch
    trainer.validate(module, datamodule=data, verbose=False)
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    state = {
        "masks": pruning.masks,
        "lora_masks": lora_pruning.masks,
        "student": module.student.state_dict(),
        "steps": trainer.global_step,
        "epoch": trainer.current_epoch,
        "train_rows": len(data.splits["train"]),
        "metrics": {**train_metrics, **val_metrics},
        "order": order,
    }
    name = f"rank{trainer.global_rank}" if devices > 1 else "single"
    torch.save(state, Path(out) / f"{name}.pt")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for field in ("teacher", "csv", "tokenizer", "out"):
        parser.add_argument(field)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--transfer-fraction", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    args = parser.parse_args()
    main(**vars(args))

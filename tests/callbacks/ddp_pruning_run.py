"""Run by test_ddp_pruning.py as ``python -m tests.callbacks.ddp_pruning_run TEACHER CSV TOKENIZER OUT``.

KD + LoRA + L1 + MagnitudePruning with DDP on 2 CPU processes (gloo); each rank saves its masks and
student weights to OUT/rank<r>.pt.
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from peft import LoraConfig

from callbacks import L1Sparsity, MagnitudePruning
from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule
from compress.peft import StudentFromTeacher


def main(teacher: str, csv: str, tokenizer: str, out: str) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    module = DistillationModule(
        teacher=teacher,
        student=StudentFromTeacher(layers=[0, 2]),
        learning_rate=1e-2,
        adapter=LoraConfig(r=4, target_modules=["query", "value"]),
    )
    pruning = MagnitudePruning(target_sparsity=0.6, start_step=0, end_step=4, frequency=1)
    l1 = L1Sparsity(strength=1e-3, include=[r"lora_"], exclude=[r"teacher"])
    data = TextClassificationDataModule(
        source=csv,
        tokenizer=tokenizer,
        text_column="review",
        label_column="sentiment",
        test_size=12,
        val_size=12,
        batch_size=4,
        max_length=16,
        seed=0,
        transfer_fraction=0.3,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=5,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[l1, pruning],
    )
    trainer.fit(module, datamodule=data)
    state = {"masks": pruning.masks, "student": module.student.state_dict(), "steps": trainer.global_step}
    torch.save(state, Path(out) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:5])

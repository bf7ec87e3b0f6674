"""Causal-LM distillation of the tiny Llama under DDP on 2 CPU processes (gloo), or in one process.

Run by test_distributed_lm.py as ``python -m tests.compress.modules.distributed_lm_run OUT --devices 2
--strategy ddp`` and ``--devices 1``. Each rank saves its student weights, logged metrics and the rows it
trained on to OUT/<strategy>-rank<r>.pt (one process: OUT/single.pt).

FSDP cannot run here: Lightning 2.6 refuses FSDPStrategy without a GPU, and torch 2.13's FSDP itself raises
"FSDP needs a non-CPU accelerator device".

The same maths in both modes: packed blocks have no padding and every token has a label, so each rank's
loss is a mean over as many tokens as every other rank's, and the mean of the rank losses (what DDP's
gradient average follows) is the single process's loss on the global batch. The 4 steps stay inside the
first epoch (no padded rows), and `EpochShuffle` gives rank r slice r of each global batch. Validation
reads the first 2 batches of each rank: Lightning's DistributedSampler interleaves rows, so the ranks
together read the single process's first 2 batches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from compress.data import LanguageModelingDataModule
from compress.distill import KDLoss
from compress.modules import DistillationModule
from compress.peft import StudentFromTeacher

PER_RANK_BATCH = 4
MAX_STEPS = 4


def main(out: str, devices: int, strategy: str) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    module = DistillationModule(
        "tiny-llama",
        StudentFromTeacher(num_hidden_layers=2),
        KDLoss(alpha=0.5, temperature=2.0, divergence="jsd"),
        learning_rate=1e-3,
        logit_chunk_size=48,
    )
    data = LanguageModelingDataModule(
        "bbc_news",
        "tiny-llama",
        block_size=32,
        max_train_documents=12,
        max_eval_documents=6,
        batch_size=PER_RANK_BATCH * 2 // devices,
        eval_batch_size=PER_RANK_BATCH * 2 // devices,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy if devices > 1 else "auto",
        max_steps=MAX_STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=2,
        val_check_interval=MAX_STEPS,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    state = {
        "student": {k: v.detach().clone() for k, v in module.student.state_dict().items()},
        "steps": trainer.global_step,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "order": list(trainer.train_dataloader.sampler)[: MAX_STEPS * PER_RANK_BATCH * 2 // devices],
    }
    name = f"{strategy}-rank{trainer.global_rank}" if devices > 1 else "single"
    torch.save(state, Path(out) / f"{name}.pt")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--strategy", default="ddp")
    main(**vars(parser.parse_args()))

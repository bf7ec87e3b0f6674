"""Run by test_kill_resume.py as ``python -m tests.reliability.kill_resume_run TEACHER CSV TOKENIZER ROOT``.

KD + LoRA + MagnitudePruning (dropout on, so the random streams matter too) for 3 epochs, a checkpoint
every 2 steps in ROOT/last.ckpt, resumed from it when it exists. Each step start is written to
ROOT/step (the test kills the process at a random one); the final weights, masks, optimizer state and
metrics go to ROOT/final.pt.
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig

from compress.callbacks import MagnitudePruning
from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule
from compress.peft import StudentFromTeacher


class StepFile(Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, *args) -> None:
        self.path.write_text(str(trainer.global_step))


def main(teacher: str, csv: str, tokenizer: str, root: str) -> None:
    torch.set_num_threads(1)
    root_dir = Path(root)
    last = root_dir / "last.ckpt"
    seed_everything(0)
    module = DistillationModule(
        teacher=teacher,
        student=StudentFromTeacher(layers=[0, 2]),
        learning_rate=1e-2,
        warmup_ratio=0.2,
        adapter=LoraConfig(r=4, target_modules=["query", "value"], lora_dropout=0.1),
    )
    pruning = MagnitudePruning(target_sparsity=0.6, start_step=1, end_step=10, frequency=2)
    data = TextClassificationDataModule(
        source=csv,
        tokenizer=tokenizer,
        text_column="review",
        label_column="sentiment",
        test_size=12,
        val_size=12,
        batch_size=8,
        max_length=16,
        seed=0,
    )
    checkpoint = ModelCheckpoint(dirpath=root_dir, save_last=True, save_top_k=0, every_n_train_steps=2)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=[pruning, checkpoint, StepFile(root_dir / "step")],
    )
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.exists() else None)
    final = {
        "weights": module.student.state_dict(),
        "masks": pruning.masks,
        "optimizer": trainer.optimizers[0].state_dict(),
        "metrics": {k: v.clone() for k, v in trainer.callback_metrics.items()},
        "steps": trainer.global_step,
    }
    torch.save(final, root_dir / "final.pt")


if __name__ == "__main__":
    main(*sys.argv[1:5])

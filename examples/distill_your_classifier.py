"""Your own Hugging Face classifier module, distilled and pruned in one run by compress's callbacks.

The LightningModule below is the user's, not compress's: it keeps its teacher under a name of its own
(``reference_model``), and its ``training_step`` calls `distillation_loss` where it called cross-entropy.
The same module first fine-tunes the teacher (no `Distillation` callback: the loss is the plain
cross-entropy), then trains a 3-layer student copied from it with

- `Distillation(teacher="reference_model")`: the teacher stays frozen, in eval mode, out of the optimizer
  and out of every checkpoint;
- `MagnitudePruning(target_sparsity=0.5)`: half the student's Linear weights, chosen by structure: not
  the teacher (frozen, registered), not the classifier (the layer producing the output);
- `ExactResume()`: a resumed run ends as the uninterrupted one.

Run on the real data (MiniLM-L6 fine-tuned on 4,000 Rotten Tomatoes reviews, 300 steps each phase):

    .venv/bin/python -m examples.distill_your_classifier --output runs/example_distill

Measured 2026-12-02 (14 min on 2 CPU cores shared with other jobs): teacher accuracy 0.810 on the 1,281
test reviews, the 3-layer student at 50% sparsity 0.806; the checkpoint holds 57 student tensors and no
teacher tensor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from transformers import AutoModelForSequenceClassification

from compress.assets import resolve_model_source
from compress.callbacks import Distillation, ExactResume, MagnitudePruning, distillation_loss
from compress.data import TextClassificationDataModule
from compress.peft import build_student

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class YourClassifier(LightningModule):
    """A user's module: any Hugging Face classifier, and optionally a frozen teacher beside it."""

    def __init__(self, model: nn.Module, reference_model: nn.Module | None = None, lr: float = 5e-5) -> None:
        super().__init__()
        self.model, self.lr = model.train(), lr
        if reference_model is not None:
            self.reference_model = reference_model  # any name: compress finds it by what it is
        self.correct = self.seen = 0

    def training_step(self, batch, batch_idx):
        logits = self.model(**{k: batch[k] for k in INPUTS if k in batch}).logits
        loss = distillation_loss(self, logits, batch["labels"])  # was: F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch, batch_idx):
        logits = self.model(**{k: batch[k] for k in INPUTS if k in batch}).logits
        self.correct += int((logits.argmax(-1) == batch["labels"]).sum())
        self.seen += len(batch["labels"])

    def configure_optimizers(self):
        return torch.optim.AdamW((p for p in self.parameters() if p.requires_grad), lr=self.lr)


def accuracy(module: YourClassifier, trainer: Trainer, data: TextClassificationDataModule) -> float:
    module.correct = module.seen = 0
    trainer.test(module, datamodule=data, verbose=False)
    return module.correct / module.seen


def run(
    output: str | Path,
    base: str = "minilm-l6",
    data_settings: dict | None = None,
    teacher_steps: int = 300,
    student_steps: int = 300,
    student_layers: tuple[int, ...] = (0, 2, 5),
    sparsity: float = 0.5,
    quiet: bool = False,
) -> dict:
    """Fine-tunes a teacher, then distils and prunes a student; returns what each reached."""
    seed_everything(0)
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ValueError(
            f"output: {output} exists and is not empty; choose a new folder (nothing is overwritten)"
        )
    data = TextClassificationDataModule(**(data_settings or {"max_train_examples": 4000, "max_length": 64}))
    data.prepare_data()
    data.setup("fit")
    shown = dict(enable_progress_bar=not quiet, enable_model_summary=False, logger=False)
    labels = len(data.label_names)
    base_model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_source(base), num_labels=labels
    )

    teacher_module = YourClassifier(base_model, lr=1e-4)
    trainer = Trainer(max_steps=teacher_steps, enable_checkpointing=False, **shown)
    trainer.fit(teacher_module, datamodule=data)  # no Distillation callback: plain cross-entropy
    teacher = teacher_module.model.eval().requires_grad_(False)
    teacher_accuracy = accuracy(teacher_module, trainer, data)

    student = build_student(teacher, list(student_layers)).train().requires_grad_(True)
    module = YourClassifier(student, reference_model=teacher, lr=1e-4)
    pruning = MagnitudePruning(target_sparsity=sparsity, frequency=max(1, student_steps // 20))
    checkpoint = ModelCheckpoint(dirpath=output, save_last=True, save_top_k=0)
    callbacks = [Distillation(teacher="reference_model"), pruning, ExactResume(), checkpoint]
    trainer = Trainer(max_steps=student_steps, callbacks=callbacks, default_root_dir=output, **shown)
    trainer.fit(module, datamodule=data)
    saved = torch.load(output / "last.ckpt", weights_only=True)["state_dict"]
    result = {
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": accuracy(module, trainer, data),
        "student_sparsity": pruning.sparsity,
        "pruned_layers": len(pruning.targets),
        "teacher_tensors_in_checkpoint": sum(k.startswith("reference_model.") for k in saved),
        "student_tensors_in_checkpoint": sum(k.startswith("model.") for k in saved),
    }
    print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/example_distill", help="checkpoint folder")
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args(argv)
    return run(args.output, teacher_steps=args.teacher_steps, student_steps=args.student_steps,
               sparsity=args.sparsity)  # fmt: skip


if __name__ == "__main__":
    main()

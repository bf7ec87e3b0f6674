"""`TaskModule`: fine-tune a sequence classifier on labels, or a causal LM on next tokens (the teacher, or a
student without a teacher).

Example:
    >>> from lightning.pytorch import Trainer
    >>> from compress.data import TextClassificationDataModule
    >>> from compress.modules import TaskModule
    >>> data = TextClassificationDataModule("rotten_tomatoes", max_train_examples=64, max_eval_examples=32,
    ...     max_length=32)
    >>> trainer = Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    ...     enable_model_summary=False, limit_val_batches=1)
    >>> module = TaskModule("runs/default/stages/teacher/model", num_labels=data.num_labels)
    >>> trainer.fit(module, datamodule=data)
    TaskModule: ... trainable of ... parameters
    >>> trainer.global_step, module.model.config.id2label  # the data's label names, for the saved model
    (2, {0: 'rotten', 1: 'fresh'})
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as L
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from peft import PeftConfig
from torch import Tensor

from compress.distill.causal_lm import NextTokens
from compress.distill.losses import hard_ce
from compress.modules.checks import check_checkpoint_matches, check_model_matches_data, check_num_labels
from compress.modules.evaluation import ClassifierEvaluation
from compress.modules.lm_evaluation import LanguageModelEvaluation
from compress.modules.loading import (
    ModelSource,
    count_parameters,
    load_model,
    name_labels,
    prepare_for_training,
    storable_args,
    task_of,
)
from compress.modules.optim import Optimization
from compress.peft.adapters import AdapterConfig
from compress.peft.bottleneck import BottleneckConfig
from compress.peft.selective import SelectiveTuning
from compress.peft.student import StudentFromTeacher
from compress.stored import from_stored

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The model's inputs of a batch (``prefix="teacher_"`` for the teacher's own tokenisation)."""
    return {k: batch[prefix + k] for k in INPUT_KEYS if prefix + k in batch}


class TaskModule(L.LightningModule):
    """Fine-tunes any `AutoModelForSequenceClassification`-style model with cross-entropy, or a causal LM
    (``AutoModelForCausalLM``: the task follows from the model) with next-token cross-entropy, validated by
    held-out perplexity (`LanguageModelEvaluation`).

    Args:
        model: a folder, an offline alias (``minilm-l6``), a hub id, a module, or a `StudentFromTeacher`
            recipe with ``source``.
        num_labels: size of the classifier head (the CLI links it from the data; None for causal LMs).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_ratio: fraction of the optimizer steps spent warming up linearly.
        lr_schedule: ``linear`` decay to 0 after warm-up, or ``constant``.
        adapter: a peft config (``peft.LoraConfig(r=8)``, DoRA, IA3, prefix or prompt tuning) or a
            `BottleneckConfig` (Houlsby/Pfeiffer): only the adapter and the classifier head train.
        tuning: which weights train (layer-wise, attention-only, BitFit, subnetwork) and LayerDrop.
        optimizer: your own optimizer instead of AdamW, e.g. ``torch.optim.SGD`` as a YAML ``class_path``
            (see `Optimization`); not stored in checkpoints.
        lr_scheduler: your own schedule instead of ``lr_schedule``, stepped every optimizer step.
    """

    def __init__(
        self,
        model: ModelSource = "minilm-l6",
        num_labels: int | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.0,
        lr_schedule: Literal["linear", "constant"] = "linear",
        adapter: PeftConfig | BottleneckConfig | None = None,
        tuning: SelectiveTuning | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.optimization = Optimization(
            learning_rate, weight_decay, warmup_ratio, lr_schedule, optimizer, lr_scheduler
        )
        check_num_labels(num_labels)
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        model = from_stored(model, StudentFromTeacher, "model.model")  # stored forms: from a checkpoint
        adapter = from_stored(adapter, AdapterConfig, "model.adapter")
        tuning = from_stored(tuning, SelectiveTuning, "model.tuning")
        self.hparams.update(storable_args(model=model, adapter=adapter, tuning=tuning))
        self.model = prepare_for_training(load_model(model, num_labels, "model.model"), adapter, tuning)
        self.task = task_of(self.model)
        if self.task == "causal_lm":
            self.evaluation = LanguageModelEvaluation()
        else:
            self.evaluation = ClassifierEvaluation(self.model.config.num_labels)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        check_model_matches_data(self.model, datamodule, "model")
        name_labels(self.model, datamodule)
        if stage == "fit":
            self.evaluation.reset()
            total, trainable = count_parameters(self.model), count_parameters(self.model, trainable_only=True)
            self.print(f"TaskModule: {trainable:,} trainable of {total:,} parameters")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.strict_loading:  # fit/validate/test(ckpt_path=...)
            check_checkpoint_matches(self, checkpoint.get("state_dict", {}))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(**model_inputs(batch)).logits

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.task == "causal_lm":
            tokens = NextTokens.of(batch)
            loss = hard_ce(tokens.select(self(batch)), tokens.labels)
        else:
            loss = hard_ce(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluation.validation_step(self, batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluation.test_step(self, batch)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.evaluation.predict_step(self, batch)

    def configure_callbacks(self) -> list:
        return self.evaluation.callbacks()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # free the gradients now: Lightning zeroes them in the next step, after its forward and loss, which
        # would keep one copy of them alive through that step (bench/kd_vs_trl.py). They are zeroed before
        # every backward anyway, so the training is the same.
        optimizer.zero_grad(set_to_none=True)

    def configure_optimizers(self):
        return self.optimization.configure(self, self.model.named_parameters())

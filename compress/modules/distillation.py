"""`DistillationModule`: a frozen teacher teaches a student through a distillation loss.

Example:
    >>> from compress.distill import KDLoss
    >>> from compress.modules import DistillationModule
    >>> from compress.peft import StudentFromTeacher
    >>> module = DistillationModule(teacher="runs/default/stages/teacher/model",
    ...     student=StudentFromTeacher(layers=[0, 2, 4]), loss=KDLoss(alpha=0.5, temperature=2.0))
    >>> module.student.config.num_hidden_layers, module.hparams.loss["init_args"]  # as checkpoints store it
    (3, {'alpha': 0.5, 'temperature': 2.0, 'divergence': 'forward_kl', 'beta': 0.5})
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from peft import PeftConfig
from torch import Tensor, nn

from compress.data import TEACHER_PREFIX
from compress.distill.causal_lm import NextTokens, causal_lm_kd_loss, shared_vocabulary
from compress.distill.intermediate import IntermediateDistillation
from compress.distill.losses import IGNORE_INDEX, KDLoss
from compress.distill.multi_teacher import average_teacher_logits, normalized_weights
from compress.distill.protocol import DistillationLoss, check_loss, reweight_hard
from compress.distill.teacher_cache import TeacherCache
from compress.modules.checks import (
    check_checkpoint_matches,
    check_chunk_size,
    check_distillation_settings,
    check_model_matches_data,
    check_same_tokenizer,
    check_teacher_student,
    check_teachers_agree,
    check_tokenizer_matches,
)
from compress.modules.evaluation import ClassifierEvaluation
from compress.modules.lm_evaluation import LanguageModelEvaluation
from compress.modules.loading import (
    ModelSource,
    count_parameters,
    load_model,
    load_teachers,
    name_labels,
    prepare_for_training,
    storable_args,
)
from compress.modules.metrics import classification_metrics
from compress.modules.optim import Optimization
from compress.modules.task import model_inputs
from compress.modules.teacher_logits import TrainingTeacherLogits
from compress.peft.adapters import AdapterConfig
from compress.peft.bottleneck import BottleneckConfig
from compress.peft.selective import SelectiveTuning
from compress.peft.student import StudentFromTeacher
from compress.sparsity.roles import register_teacher
from compress.stored import from_stored

TEACHER_KEY = "teachers."


class DistillationModule(L.LightningModule):
    """Trains ``student`` on ``loss.components(student_logits, teacher_logits, labels)`` with a frozen
    ``teacher``: a sequence classifier, or a causal LM on next tokens (the task follows from the teacher).

    The teacher stays in eval mode without gradients, is left out of the optimizer and, unless
    ``save_teacher`` is set, of checkpoints (it is reloaded from its source). Validation reports the
    student's accuracy and macro-F1 every epoch and the teacher's once; for causal LMs, the student's and
    the teacher's perplexity, the per-token KL to the teacher and their top-1 agreement
    (`LanguageModelEvaluation`). A causal-LM pair that shares a tokenizer but pads its embeddings
    differently is compared on the tokenizer's real vocabulary.

    Args:
        teacher: the fine-tuned teacher (a folder, an offline alias or a module), or a list of them:
            their soft targets are averaged in probability space at the loss's temperature.
        student: a folder/alias/module, or a `StudentFromTeacher` recipe (default: half of the teacher's
            layers, spread uniformly).
        loss: any `DistillationLoss` (default ``KDLoss(alpha=0.5, temperature=2.0)``); its parts are
            logged as ``train/<name>``.
        num_labels: the data's label count (linked by the CLI); checked against teacher and student.
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the optimizer steps spent warming up.
        lr_schedule: ``linear`` decay after warm-up, or ``constant``.
        save_teacher: also store the teacher's weights in checkpoints.
        adapter: a peft config for the student (``peft.LoraConfig(r=8)``, DoRA, IA3, prefix or prompt
            tuning) or a `BottleneckConfig` (Houlsby/Pfeiffer): only the adapter and the head train.
        tuning: which weights train (layer-wise, attention-only, BitFit, subnetwork) and LayerDrop.
        intermediate: also match hidden states / attention maps of mapped layers (TinyBERT-style);
            needs shared inputs (one tokenizer) and a single teacher.
        teacher_weights: weight of each teacher in the mixture (default: equal).
        teacher_cache: compute the teacher's logits once per training row before training, keep them
            on disk (keyed by teacher, data and settings) and read them at every step instead of running
            the teacher: see `TeacherCache`. Needs deterministic inputs; not with ``intermediate``.
        optimizer: your own optimizer instead of AdamW, e.g. ``torch.optim.SGD`` as a YAML ``class_path``
            (see `Optimization`); not stored in checkpoints.
        lr_scheduler: your own schedule instead of ``lr_schedule``, stepped every optimizer step.
        logit_chunk_size: causal LMs: compute the student's logits and the loss this many tokens at a time
            from its final hidden states (`causal_lm_kd_loss`), so ``tokens x vocabulary`` student logits
            never exist whole; None computes them whole. Used with a `KDLoss` and no ``intermediate``.
    """

    def __init__(
        self,
        teacher: str | nn.Module | list[str | nn.Module],
        student: ModelSource | None = None,
        loss: DistillationLoss | None = None,
        num_labels: int | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.0,
        lr_schedule: Literal["linear", "constant"] = "linear",
        save_teacher: bool = False,
        adapter: PeftConfig | BottleneckConfig | None = None,
        tuning: SelectiveTuning | None = None,
        intermediate: IntermediateDistillation | None = None,
        teacher_weights: list[float] | None = None,
        teacher_cache: TeacherCache | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        logit_chunk_size: int | None = 1024,
    ) -> None:
        super().__init__()
        self.optimization = Optimization(
            learning_rate, weight_decay, warmup_ratio, lr_schedule, optimizer, lr_scheduler
        )
        self.save_hyperparameters(ignore=["teacher", "student", "loss", "optimizer", "lr_scheduler"])
        settings = {  # stored forms come from a checkpoint's hyper-parameters
            "student": from_stored(student, StudentFromTeacher, "model.student"),
            "loss": from_stored(loss, DistillationLoss, "model.loss"),
            "adapter": from_stored(adapter, AdapterConfig, "model.adapter"),
            "tuning": from_stored(tuning, SelectiveTuning, "model.tuning"),
            "intermediate": from_stored(intermediate, IntermediateDistillation, "model.intermediate"),
            "teacher_cache": from_stored(teacher_cache, TeacherCache, "model.teacher_cache"),
        }
        self.hparams.update(storable_args(teacher=teacher, **settings))
        self.teachers = register_teacher(load_teachers(teacher))  # no sparsity callback selects them
        self.teacher_weights = normalized_weights(teacher_weights, len(self.teachers))
        self.task = check_teachers_agree(self.teachers)
        depth = self.teacher.config.num_hidden_layers
        recipe = settings["student"]
        if recipe is None:
            recipe = StudentFromTeacher(num_hidden_layers=max(1, depth // 2))
        student_model = load_model(recipe, self.teacher.config.num_labels, "model.student", self.teacher)
        self.student = prepare_for_training(student_model, settings["adapter"], settings["tuning"])
        self.loss = check_loss(settings["loss"] if settings["loss"] is not None else KDLoss())
        for t in self.teachers:
            check_teacher_student(t, self.student, num_labels)
        if self.task == "causal_lm":
            student_source = recipe.source if isinstance(recipe, StudentFromTeacher) else recipe
            check_same_tokenizer(teacher, student_source)
        check_distillation_settings(len(self.teachers), intermediate, teacher_cache)
        check_chunk_size(logit_chunk_size)
        self.logit_chunk_size = logit_chunk_size
        matching = settings["intermediate"]
        self.intermediate = matching.build_for(self.student, self.teacher) if matching is not None else None
        self.vocab_size = shared_vocabulary([*self.teachers, self.student])
        self._teacher_evaluated = False
        if self.task == "causal_lm":
            self.evaluation = LanguageModelEvaluation(with_teacher=True)
        else:
            labels = self.student.config.num_labels
            self.evaluation = ClassifierEvaluation(labels)
            self.teacher_metrics = classification_metrics(labels, "val/teacher_")
        self.training_teacher_logits = TrainingTeacherLogits(settings["teacher_cache"])

    @property
    def teacher(self) -> nn.Module:
        """The (first) teacher."""
        return self.teachers[0]

    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        self.teachers.eval()  # module.train() (by a user, a callback or a loop) must not wake the teacher
        return self

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        check_model_matches_data(self.student, datamodule, "model.student")
        shared_inputs = getattr(datamodule, "teacher_tokenizer", None) is None
        if self.intermediate is not None and not shared_inputs:
            raise ValueError(
                "model.intermediate: layer matching needs the same token positions in both models, "
                "but data.teacher_tokenizer differs from data.tokenizer; drop one of the two settings"
            )
        given = self.hparams.get("teacher")  # a path or alias (a module is not stored)
        sources = given if isinstance(given, list) else [given]
        for t, source in zip(self.teachers, sources, strict=False):
            check_model_matches_data(
                t, datamodule, "model.teacher", "tokenizer" if shared_inputs else "teacher_tokenizer"
            )
            if shared_inputs:
                check_tokenizer_matches(source, getattr(datamodule, "tokenizer", None), "model.teacher")
        name_labels(self.student, datamodule)
        if self.task == "causal_lm" and getattr(datamodule, "tokenizer", None) is not None:
            self.vocab_size = len(datamodule.tokenizer)  # embeddings may be padded beyond it
        if stage == "fit":
            self.evaluation.reset()
            self.print(
                f"DistillationModule: student {count_parameters(self.student, True):,} trainable of "
                f"{count_parameters(self.student):,}; teacher {count_parameters(self.teachers):,} frozen"
            )

    def on_fit_start(self) -> None:
        trainable = [n for n, p in self.teachers.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"model.teacher: {len(trainable)} teacher parameters require grad (e.g. {trainable[0]}); "
                "the teacher must stay frozen: do not unfreeze it after building the module"
            )
        self.training_teacher_logits.open(self, self.trainer)

    def on_train_epoch_start(self) -> None:
        self.training_teacher_logits.start_epoch()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self._vocabulary(self.student(**model_inputs(batch)).logits)

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, Tensor]) -> Tensor:
        """The teacher's logits, or the teachers' mixture at the loss's temperature."""
        logits = [self._vocabulary(self._teacher_outputs(batch, t).logits) for t in self.teachers]
        return average_teacher_logits(logits, self.teacher_weights, self.loss.temperature)

    def _vocabulary(self, logits: Tensor) -> Tensor:
        """A causal LM's logits over the shared vocabulary (padding rows of the embeddings cut off)."""
        return logits[..., : self.vocab_size] if self.task == "causal_lm" else logits

    @torch.no_grad()
    def _teacher_outputs(self, batch: dict[str, Tensor], teacher: nn.Module, **flags):
        prefix = TEACHER_PREFIX if TEACHER_PREFIX + "input_ids" in batch else ""
        return teacher(**model_inputs(batch, prefix), **flags)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.task == "causal_lm" and self._chunked:
            labels = NextTokens.of(batch).labels
            teacher_logits = self.training_teacher_logits(self, batch)
            parts = causal_lm_kd_loss(
                self.student, batch, teacher_logits, self.loss, self.vocab_size, self.logit_chunk_size
            )
            matched = None
        else:
            parts, labels, matched = self._unchunked_parts(batch)
        parts = self._hard_over_all_ranks(parts, labels)
        if matched is not None:
            parts["loss"] = parts["loss"] + matched["loss"]
            parts.update(hidden=matched["hidden"], attention=matched["attention"])
        size = len(batch["input_ids"])
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"}, batch_size=size)
        return parts["loss"]

    @property
    def _chunked(self) -> bool:
        plain = self.intermediate is None and isinstance(self.loss, KDLoss)
        return plain and self.logit_chunk_size is not None

    def _unchunked_parts(self, batch: dict[str, Tensor]):
        """The loss's parts on whole logits, the hard labels, and the intermediate-matching terms."""
        student_logits, teacher_logits, matched = self._training_logits(batch)
        if self.task == "causal_lm":
            tokens = NextTokens.of(batch)
            student_logits, teacher_logits = tokens.select(student_logits), tokens.select(teacher_logits)
            labels, mask = tokens.labels, None
        else:  # the mask is for token-level losses; (B, C) logits ignore it
            labels, mask = batch["labels"], batch.get("attention_mask")
        parts = self.loss.components(student_logits, teacher_logits, labels, attention_mask=mask)
        return parts, labels, matched

    def _training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor] | None]:
        """Student and teacher logits, and the intermediate-matching terms when layers are matched."""
        if self.intermediate is None:
            return self(batch), self.training_teacher_logits(self, batch), None
        flags = {"output_hidden_states": True, "output_attentions": self.intermediate.needs_attentions}
        student = self.student(**model_inputs(batch), **flags)
        teacher = self._teacher_outputs(batch, self.teacher, **flags)
        matched = self.intermediate(
            student.hidden_states,
            teacher.hidden_states,
            batch.get("attention_mask"),
            student.attentions,
            teacher.attentions,
        )
        return self._vocabulary(student.logits), self._vocabulary(teacher.logits), matched

    def _hard_over_all_ranks(self, parts: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """Under DDP, weight each rank's hard term (a mean over its own labelled rows) so that the averaged
        gradient is that of the mean over all ranks' labelled rows (one process, the global batch)."""
        world = self.trainer.world_size
        if world == 1 or not self.loss.hard_weight:
            return dict(parts)
        local = (labels != IGNORE_INDEX).sum()
        total = self.trainer.strategy.reduce(local.float(), reduce_op="sum")
        return reweight_hard(parts, self.loss.hard_weight, local * world / total.clamp(min=1))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluation.validation_step(self, batch)  # a causal LM's includes the teacher's metrics
        if self.task == "classification" and not self._teacher_evaluated and not self.trainer.sanity_checking:
            self.teacher_metrics.update(self.teacher_logits(batch), batch["labels"])

    def on_validation_epoch_end(self) -> None:
        if self.task == "classification" and not self._teacher_evaluated and not self.trainer.sanity_checking:
            self.log_dict(self.teacher_metrics.compute())
            self.teacher_metrics.reset()
            self._teacher_evaluated = True

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
        extra = self.intermediate.named_parameters() if self.intermediate is not None else ()
        return self.optimization.configure(self, chain(self.student.named_parameters(), extra))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.hparams.save_teacher:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TEACHER_KEY)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        if not any(k.startswith(TEACHER_KEY) for k in state):  # teachers left out: keep the loaded ones
            state.update({TEACHER_KEY + k: v for k, v in self.teachers.state_dict().items()})
        if self._trainer is not None and self.strict_loading:  # fit/validate/test(ckpt_path=...)
            check_checkpoint_matches(self, state)

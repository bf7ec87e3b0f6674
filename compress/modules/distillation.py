"""`DistillationModule`: a frozen teacher teaches a student through a KD loss.

Example:
    >>> from compress.distill import KDLoss
    >>> from compress.modules import DistillationModule
    >>> from compress.peft import StudentFromTeacher
    >>> module = DistillationModule(teacher="runs/default/stages/teacher/model",
    ...     student=StudentFromTeacher(layers=[0, 2, 4]), loss=KDLoss())  # doctest: +SKIP
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Literal

import lightning.pytorch as L
import torch
from peft import PeftConfig
from torch import Tensor, nn

from compress.data import EXAMPLE_ID, TEACHER_PREFIX
from compress.distill.intermediate import IntermediateDistillation, IntermediateLoss
from compress.distill.losses import IGNORE_INDEX, KDLoss
from compress.distill.multi_teacher import average_teacher_logits, normalized_weights
from compress.distill.teacher_cache import TeacherCache
from compress.modules.cached_teacher import check_cached_logits, open_teacher_cache
from compress.modules.checks import check_checkpoint_matches, check_model_matches_data, check_num_labels
from compress.callbacks import StopOnNonFiniteLoss
from compress.modules.loading import (
    ModelSource,
    count_parameters,
    load_classifier,
    load_teachers,
    prepare_for_training,
    storable_args,
)
from compress.modules.metrics import classification_metrics, log_evaluation
from compress.modules.optim import adamw_with_warmup, check_optimization
from compress.callbacks import ExactResume
from compress.modules.task import model_inputs
from compress.peft.bottleneck import BottleneckConfig
from compress.peft.selective import SelectiveTuning
from compress.peft.student import StudentFromTeacher

TEACHER_KEY = "teachers."


class DistillationModule(L.LightningModule):
    """Trains ``student`` on ``loss(student_logits, teacher_logits, labels)`` with a frozen ``teacher``.

    The teacher stays in eval mode without gradients, is left out of the optimizer and, unless
    ``save_teacher`` is set, of checkpoints (it is reloaded from its source). Validation reports the
    student's accuracy and macro-F1 every epoch and the teacher's once.

    Args:
        teacher: the fine-tuned teacher (a folder, an offline alias or a module), or a list of them:
            their soft targets are averaged in probability space at the loss's temperature.
        student: a folder/alias/module, or a `StudentFromTeacher` recipe (default: half of the teacher's
            layers, spread uniformly).
        loss: the distillation loss (default ``KDLoss(alpha=0.5, temperature=2.0)``).
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
    """

    def __init__(
        self,
        teacher: str | nn.Module | list[str | nn.Module],
        student: ModelSource | None = None,
        loss: KDLoss | None = None,
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
    ) -> None:
        super().__init__()
        check_optimization(learning_rate, weight_decay, warmup_ratio)
        self.save_hyperparameters(ignore=["teacher", "student", "loss"])
        self.hparams.update(
            storable_args(
                teacher=teacher,
                student=student,
                loss=loss,
                adapter=adapter,
                intermediate=intermediate,
                tuning=tuning,
                teacher_cache=teacher_cache,
            )
        )
        self.teachers = load_teachers(teacher)
        self.teacher_weights = normalized_weights(teacher_weights, len(self.teachers))
        depth = self.teacher.config.num_hidden_layers
        recipe = student if student is not None else StudentFromTeacher(num_hidden_layers=max(1, depth // 2))
        student_model = load_classifier(recipe, self.teacher.config.num_labels, "model.student", self.teacher)
        self.student = prepare_for_training(student_model, adapter, tuning)
        self.loss = KDLoss(**loss) if isinstance(loss, dict) else loss if loss is not None else KDLoss()
        for t in self.teachers:
            _check_pair(t, self.student, num_labels)
        if intermediate is not None and len(self.teachers) > 1:
            raise ValueError(
                "model.intermediate: layer matching takes a single teacher; drop `intermediate` "
                "or give one teacher"
            )
        if teacher_cache is not None and intermediate is not None:
            raise ValueError(
                "model.teacher_cache: intermediate distillation needs the teacher's hidden states at every "
                "step; drop teacher_cache or intermediate"
            )
        self.intermediate = _build_intermediate(intermediate, self.student, self.teacher)
        labels = self.student.config.num_labels
        self.val_metrics = classification_metrics(labels, "val/")
        self.test_metrics = classification_metrics(labels, "test/")
        self.teacher_metrics = classification_metrics(labels, "val/teacher_")
        self._teacher_evaluated = False
        self.cache_settings = (
            TeacherCache(**teacher_cache) if isinstance(teacher_cache, dict) else teacher_cache
        )
        self._cache, self._check_cache = None, False

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
        for t in self.teachers:
            check_model_matches_data(
                t, datamodule, "model.teacher", "tokenizer" if shared_inputs else "teacher_tokenizer"
            )
        if stage == "fit":
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
        if self.cache_settings is not None:
            self._cache = open_teacher_cache(self.cache_settings, self, self.trainer)

    def on_train_epoch_start(self) -> None:
        self._check_cache = self._cache is not None and self.cache_settings.verify

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.student(**model_inputs(batch)).logits

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, Tensor]) -> Tensor:
        """The teacher's logits, or the teachers' mixture at the loss's temperature."""
        logits = [self._teacher_outputs(batch, t).logits for t in self.teachers]
        return average_teacher_logits(logits, self.teacher_weights, getattr(self.loss, "temperature", 1.0))

    @torch.no_grad()
    def _teacher_outputs(self, batch: dict[str, Tensor], teacher: nn.Module, **flags):
        prefix = TEACHER_PREFIX if TEACHER_PREFIX + "input_ids" in batch else ""
        return teacher(**model_inputs(batch, prefix), **flags)

    def _training_teacher_logits(self, batch: dict[str, Tensor]) -> Tensor:
        if self._cache is None:
            return self.teacher_logits(batch)
        cached = self._cache.lookup(batch[EXAMPLE_ID]).to(self.device, non_blocking=True)
        if self._check_cache:  # once per epoch: the cache must still be what the teacher says
            self._check_cache = False
            with torch.autocast(self.device.type, enabled=False):
                check_cached_logits(cached, self.teacher_logits(batch), self.cache_settings.top_k)
        return cached

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        matched = None
        if self.intermediate is None:
            student_logits, teacher_logits = self(batch), self._training_teacher_logits(batch)
        else:
            flags = {"output_hidden_states": True, "output_attentions": self.intermediate.needs_attentions}
            student = self.student(**model_inputs(batch), **flags)
            teacher = self._teacher_outputs(batch, self.teacher, **flags)
            student_logits, teacher_logits = student.logits, teacher.logits
            matched = self.intermediate(
                student.hidden_states,
                teacher.hidden_states,
                batch.get("attention_mask"),
                student.attentions,
                teacher.attentions,
            )
        parts = self.loss.components(student_logits, teacher_logits, batch["labels"])
        parts = self._hard_over_all_ranks(parts, batch["labels"])
        logged = {"train/hard": parts["hard"], "train/soft": parts["soft"]}
        if matched is not None:
            parts["loss"] = parts["loss"] + matched["loss"]
            logged.update({"train/hidden": matched["hidden"], "train/attention": matched["attention"]})
        size = len(batch["labels"])
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=size)
        self.log_dict(logged, batch_size=size)
        return parts["loss"]

    def _hard_over_all_ranks(self, parts: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """Under DDP, weight each rank's hard term (a mean over its own labelled rows) so that the averaged
        gradient is that of the mean over all ranks' labelled rows (one process, the global batch)."""
        world = self.trainer.world_size
        if world == 1 or not getattr(self.loss, "alpha", 0):
            return parts
        local = (labels != IGNORE_INDEX).sum()
        total = self.trainer.strategy.reduce(local.float(), reduce_op="sum")
        hard = parts["hard"] * (local * world / total.clamp(min=1))
        return {**parts, "loss": parts["loss"] + self.loss.alpha * (hard - parts["hard"]), "hard": hard}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        log_evaluation(self, self(batch), batch["labels"], self.val_metrics, "val/loss")
        if not self._teacher_evaluated and not self.trainer.sanity_checking:
            self.teacher_metrics.update(self.teacher_logits(batch), batch["labels"])

    def on_validation_epoch_end(self) -> None:
        if not self._teacher_evaluated and not self.trainer.sanity_checking:
            self.log_dict(self.teacher_metrics.compute())
            self.teacher_metrics.reset()
            self._teacher_evaluated = True

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        log_evaluation(self, self(batch), batch["labels"], self.test_metrics, "test/loss")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch).argmax(-1)

    def configure_callbacks(self) -> list:
        return [ExactResume(), StopOnNonFiniteLoss()]

    def configure_optimizers(self):
        h = self.hparams
        extra = self.intermediate.named_parameters() if self.intermediate is not None else ()
        return adamw_with_warmup(
            self,
            chain(self.student.named_parameters(), extra),
            h.learning_rate,
            h.weight_decay,
            h.warmup_ratio,
            decay=h.lr_schedule == "linear",
        )

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


def _check_pair(teacher: nn.Module, student: nn.Module, num_labels: int | None) -> None:
    check_num_labels(num_labels)
    t, s = teacher.config.num_labels, student.config.num_labels
    if t != s:
        raise ValueError(
            f"model.student: the student has {s} labels, the teacher {t}; they must agree "
            "(build the student from the teacher, or load one with the teacher's label set)"
        )
    if num_labels is not None and num_labels != t:
        raise ValueError(
            f"model.num_labels: the data has {num_labels} labels but the teacher {t}; use a "
            "teacher fine-tuned on this data"
        )


def _build_intermediate(settings, student: nn.Module, teacher: nn.Module) -> IntermediateLoss | None:
    if settings is None:
        return None
    settings = IntermediateDistillation(**settings) if isinstance(settings, dict) else settings
    s, t = student.config, teacher.config
    matching = settings.build(s.num_hidden_layers, t.num_hidden_layers, s.hidden_size, t.hidden_size)
    if matching.needs_attentions:  # sdpa kernels do not return attention maps
        for model in (student, teacher):
            model.set_attn_implementation("eager")
    return matching

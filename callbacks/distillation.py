"""`Distillation`: knowledge distillation for a user's own LightningModule, with one changed line.

The callback owns the teacher: it loads it (folder or offline alias) or takes the module, freezes it,
keeps it in eval mode, on the student's device and precision, out of the optimizer and out of every
checkpoint, and never lets a sparsity callback select it (`compress.sparsity.roles.register_teacher`).
Before each training batch it runs the teacher on that batch; the module's ``training_step`` turns its own
logits into the distillation loss with `distillation_loss` (the one changed line):

.. code-block:: python

    loss = F.cross_entropy(logits, labels)                # before
    loss = distillation_loss(self, logits, labels)        # after: KD when a Distillation callback runs

Without a `Distillation` callback (or outside training) `distillation_loss` is the plain cross-entropy,
shifted by one position for a causal LM, so the same module trains with or without a teacher.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning.pytorch import LightningModule, Trainer
    >>> class Student(LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Linear(4, 3)
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         return distillation_loss(self, self.net(x), y)
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    >>> data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    >>> trainer = Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
    ...     enable_model_summary=False, callbacks=[Distillation(teacher=nn.Linear(4, 3))])
    >>> trainer.fit(Student(), torch.utils.data.DataLoader(data, batch_size=4))
    >>> trainer.callbacks[0].teacher.training, trainer.callbacks[0].teacher.weight.requires_grad
    (False, False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from compress.distill.causal_lm import NextTokens
from compress.distill.intermediate import IntermediateDistillation, IntermediateLoss
from compress.distill.layer_outputs import LayerOutputs
from compress.distill.losses import KDLoss, hard_ce
from compress.distill.protocol import DistillationLoss, check_loss
from compress.distill.teacher_cache import fingerprint_model
from compress.distill.teacher_model import frozen, load_teacher_model, logits_of, teacher_inputs
from compress.export.prepare import is_causal_lm
from compress.sparsity.roles import register_teacher, trained_model

from .checkpoint_reading import read_checkpoints_through, stop_reading_through
from .exact_resume import warn_unless_exact_resume
from .param_groups import grow_schedulers


class Distillation(Callback):
    """Runs a frozen teacher on every training batch; `distillation_loss` turns the student's logits into
    ``loss(student_logits, teacher_logits, labels)``.

    The teacher is a folder or offline alias (loaded here), a module (owned by the callback: not a
    submodule of the LightningModule, so not in its checkpoints), or the name of a submodule of the
    LightningModule (``teacher="big_model"``): its weights are then taken out of every checkpoint written
    and put back from the module when one is read, so checkpoints hold the student only. A resumed run
    refuses a different teacher (its weights' digest is in the callback's state).

    Args:
        teacher: folder, offline alias, module, or attribute path of a submodule of the LightningModule.
        loss: the distillation loss (`KDLoss` by default: α=0.5, T=2), anything meeting `DistillationLoss`.
        intermediate: also match the hidden states of mapped layers (Hugging Face student and teacher; the
            learned width projections train with the student's optimizer and resume from this callback's
            state). Attention maps are not available here: use `DistillationModule` for them.
        student: attribute path of the student network for ``intermediate`` and causal-LM detection
            (default: found by structure, `compress.sparsity.roles.trained_model`).
        inputs: ``batch -> (args, kwargs)`` the teacher is called with; default: a dict batch's keys its
            ``forward`` takes (never ``labels``), a tuple batch's first element, else the batch.

    Example:
        >>> from torch import nn
        >>> Distillation(teacher=nn.Linear(4, 3)).loss
        KDLoss(alpha=0.5, temperature=2.0, divergence=forward_kl)
    """

    def __init__(
        self,
        teacher: str | nn.Module,
        loss: DistillationLoss | None = None,
        intermediate: IntermediateDistillation | None = None,
        student: str | None = None,
        inputs: Callable[[Any], tuple[tuple, dict[str, Any]]] | None = None,
    ) -> None:
        if not isinstance(teacher, (str, nn.Module)):
            raise TypeError(
                f"Distillation.teacher: {type(teacher).__name__} is not a folder, alias, module or attribute "
                "name; pass e.g. teacher='runs/teacher/model' or the teacher module"
            )
        if intermediate is not None and intermediate.attention_weight > 0:
            raise ValueError(
                "Distillation.intermediate: attention_weight > 0 needs attention maps, which this callback "
                "does not collect; set attention_weight=0 or use DistillationModule"
            )
        self.source, self.intermediate, self.student = teacher, intermediate, student
        self.loss = check_loss(KDLoss() if loss is None else loss, "Distillation.loss")
        self.inputs = inputs
        self.teacher: nn.Module | None = None
        self.attribute: str | None = None  # the teacher's name in the LightningModule, if it lives there
        self.matching: IntermediateLoss | None = None
        self._fingerprint: str | None = None
        self._causal = False
        self._logits: Tensor | None = None
        self._mask: Tensor | None = None
        self._layers: tuple[LayerOutputs, LayerOutputs] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if sum(isinstance(c, Distillation) for c in trainer.callbacks) > 1:
            raise ValueError("Distillation: the Trainer has several Distillation callbacks; give it one")
        warn_unless_exact_resume(trainer, "Distillation")
        self.teacher, self.attribute = self._resolve(pl_module)
        register_teacher(frozen(self.teacher))
        self._fingerprint = fingerprint_model(self.teacher)
        self._causal = is_causal_lm(self.teacher)
        if self.intermediate is not None:
            self._start_matching(pl_module)
        if self.attribute is not None:
            read_checkpoints_through(trainer, self, self._put_teacher_back)
        where = f"pl_module.{self.attribute}" if self.attribute else "held by the callback"
        count = sum(p.numel() for p in self.teacher.parameters())
        rank_zero_info(f"Distillation: teacher {type(self.teacher).__name__} ({where}), {count:,} frozen")

    def _resolve(self, pl_module: pl.LightningModule) -> tuple[nn.Module, str | None]:
        source = self.source
        if isinstance(source, str):
            try:
                source = pl_module.get_submodule(source)
            except AttributeError:
                return load_teacher_model(source, "Distillation.teacher"), None
        name = next((n for n, m in pl_module.named_modules() if m is source), None)
        if name is not None:
            self._check_not_student(pl_module, source, name)
        return source, name

    @staticmethod
    def _check_not_student(pl_module: pl.LightningModule, teacher: nn.Module, name: str) -> None:
        inside = {id(p) for p in teacher.parameters()}
        others = [p for p in pl_module.parameters() if p.requires_grad and id(p) not in inside]
        if not name or not others:
            raise ValueError(
                f"Distillation.teacher: {name or 'the LightningModule'!r} holds every trainable parameter of "
                f"{type(pl_module).__name__}: that is the student; pass the teacher's own attribute or module"
            )

    def _start_matching(self, pl_module: pl.LightningModule) -> None:
        student = trained_model(pl_module, self.student, "Distillation.student")
        self.matching = self.intermediate.build_for(student, self.teacher)
        self._layers = (LayerOutputs(student), LayerOutputs(self.teacher))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.attribute is None:  # a teacher inside the module was placed and converted with it
            self.teacher = trainer.precision_plugin.convert_module(self.teacher).to(pl_module.device)
        teacher_ids = {id(p) for p in self.teacher.parameters()}
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in teacher_ids]
        if self.matching is not None:
            self.matching.to(pl_module.device)
            for optimizer in trainer.optimizers[:1]:  # the same groups on resume: before its state loads
                optimizer.add_param_group({"params": list(self.matching.parameters())})
                grow_schedulers(trainer, optimizer, lr_factor=1.0)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.teacher.eval()  # whatever called .train() on the LightningModule
        args, kwargs = self.inputs(batch) if self.inputs is not None else teacher_inputs(self.teacher, batch)
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            self._logits = logits_of(self.teacher(*args, **kwargs))
        self._mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._logits = None  # the teacher's logits of a finished batch are never reused

    def loss_for(
        self,
        pl_module: pl.LightningModule,
        student_logits: Tensor,
        labels: Tensor | None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """The distillation loss of this batch (what `distillation_loss` returns during training)."""
        if self._logits is None:
            raise RuntimeError(
                "distillation_loss: no teacher logits for this batch; call it from training_step, once the "
                "Distillation callback has run the teacher on the batch"
            )
        mask = attention_mask if attention_mask is not None else self._mask
        parts = self._logit_parts(student_logits, self._logits, labels, mask)
        if self.matching is not None:
            student_hidden, teacher_hidden = (layers.hidden() for layers in self._layers)
            matched = self.matching(student_hidden, teacher_hidden, mask)
            parts = {**parts, "loss": parts["loss"] + matched["loss"], "hidden": matched["hidden"]}
        for key, value in parts.items():
            if key != "loss":
                pl_module.log(f"train/kd_{key}", value.detach())
        return parts["loss"]

    def _logit_parts(
        self, student: Tensor, teacher: Tensor, labels: Tensor | None, mask: Tensor | None
    ) -> dict[str, Tensor]:
        if self._causal:
            tokens = _next_tokens(labels, mask, student)
            vocab = min(student.shape[-1], teacher.shape[-1])  # embeddings padded differently
            return self.loss.components(
                tokens.select(student)[:, :vocab], tokens.select(teacher)[:, :vocab], tokens.labels
            )
        if student.shape != teacher.shape:
            raise ValueError(
                f"Distillation.teacher: its logits have shape {tuple(teacher.shape)} but the student's "
                f"have {tuple(student.shape)}; teacher and student must predict the same classes"
            )
        return self.loss.components(student, teacher, labels, mask)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.attribute is not None:
            prefix = f"{self.attribute}."
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(prefix)]:
                del state[key]

    def _put_teacher_back(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint read gets the teacher's weights from the module, so strict loading finds them."""
        state = checkpoint.get("state_dict")
        if state is not None:
            for key, value in self.teacher.state_dict().items():
                state.setdefault(f"{self.attribute}.{key}", value)

    @override
    def state_dict(self) -> dict[str, Any]:
        matching = self.matching.state_dict() if self.matching is not None else None
        return {"teacher_fingerprint": self._fingerprint, "matching": matching}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["teacher_fingerprint"]
        if self._fingerprint is not None and saved != self._fingerprint:
            raise ValueError(
                "Distillation.teacher: the checkpoint was trained against another teacher (its weights' "
                "digest differs); resume with the same teacher, or start a new run"
            )
        if self.matching is not None and state_dict["matching"] is not None:
            self.matching.load_state_dict(state_dict["matching"])

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        stop_reading_through(trainer, self)
        for layers in self._layers or ():
            layers.remove()
        self._layers = None


def distillation_loss(
    module: pl.LightningModule,
    student_logits: Tensor,
    labels: Tensor | None = None,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """The KD loss of this training batch when ``module``'s Trainer has a `Distillation` callback; else
    (no callback, or validation/test) the cross-entropy with ``labels``, shifted for a causal LM.

    Args:
        module: the LightningModule calling it (``self`` in ``training_step``).
        student_logits: the student's logits on the batch: ``(B, C)`` for a classifier, ``(B, L, V)``
            for a causal LM (whose labels are unshifted, as in Hugging Face).
        labels: hard labels (-100: none); None trains on the teacher's soft targets only.
        attention_mask: padding positions to leave out (default: the batch's ``attention_mask``).
    """
    callback = _distillation_of(module)
    if callback is not None and module.training:
        return callback.loss_for(module, student_logits, labels, attention_mask)
    if labels is None:
        raise ValueError(
            "distillation_loss: labels=None needs a teacher (a Distillation callback) to learn from"
        )
    if callback._causal if callback is not None else is_causal_lm(trained_model(module)):
        tokens = _next_tokens(labels, attention_mask, student_logits)
        return hard_ce(tokens.select(student_logits), tokens.labels)
    return hard_ce(student_logits, labels)


def _distillation_of(module: pl.LightningModule) -> Distillation | None:
    try:
        callbacks = module.trainer.callbacks
    except RuntimeError:  # not attached to a Trainer
        return None
    return next((c for c in callbacks if isinstance(c, Distillation)), None)


def _next_tokens(labels: Tensor | None, mask: Tensor | None, logits: Tensor) -> NextTokens:
    """The next-token positions of a causal-LM batch; no labels: every position soft only."""
    if labels is None:
        labels = torch.full(logits.shape[:2], -100, dtype=torch.long, device=logits.device)
    batch = {"input_ids": labels, "labels": labels}
    return NextTokens.of(batch if mask is None else {**batch, "attention_mask": mask})

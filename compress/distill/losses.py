"""Hinton knowledge-distillation loss: ``α·CE(z_s, y) + (1−α)·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``.

Example:
    >>> import torch
    >>> from compress.distill import KDLoss
    >>> loss = KDLoss(alpha=0.5, temperature=2.0)
    >>> student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    >>> labels = torch.tensor([0, 2, -100, 1])  # -100: unlabelled, soft term only
    >>> loss(student, teacher, labels).shape
    torch.Size([])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100


class KDLoss(nn.Module):
    """Hard-label cross-entropy plus temperature-scaled KL to the teacher (Hinton et al., 2015).

    The soft term is ``F.kl_div(log_softmax(z_s/T), softmax(z_t/T), reduction="batchmean") * T**2``:
    ``batchmean`` is the true KL per example (``"mean"`` would also divide by the number of classes) and
    the T² factor keeps the soft-term gradients on the same scale for every temperature.

    Rows labelled -100 (or all rows when ``labels`` is None) are unlabelled: they enter the soft term
    only. The hard term is the mean cross-entropy over labelled rows (0 when a batch has none). Sequence
    outputs ``(B, L, V)`` are flattened to their valid positions ``(N, V)`` first, using
    ``attention_mask`` (padding excluded) when given. It meets `DistillationLoss`: ``hard_weight`` is α.

    Args:
        alpha: weight of the hard-label term, in [0, 1]; 0 is pure distillation, 1 plain fine-tuning.
        temperature: softmax temperature T > 0 of both distributions in the soft term.
    """

    def __init__(self, alpha: float = 0.5, temperature: float = 2.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"KDLoss.alpha: {alpha!r} must be in [0, 1] (weight of the hard-label term)")
        if not temperature > 0:
            raise ValueError(f"KDLoss.temperature: {temperature!r} must be > 0 (typical values 1-8)")
        self.alpha, self.temperature = float(alpha), float(temperature)

    @property
    def hard_weight(self) -> float:
        """α, the weight of the hard-label term (`DistillationLoss`)."""
        return self.alpha

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """The scalar loss; `components` gives its parts."""
        return self.components(student_logits, teacher_logits, labels, attention_mask)["loss"]

    def components(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{"loss", "hard", "soft"}``: the total, the hard-label CE and the T²-scaled KL."""
        student, teacher, labels = _flatten(student_logits, teacher_logits, labels, attention_mask)
        soft = soft_kl(student, teacher, self.temperature)
        hard = hard_ce(student, labels)
        return {"loss": self.alpha * hard + (1.0 - self.alpha) * soft, "hard": hard, "soft": soft}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}"


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))`` averaged over rows (``batchmean``)."""
    t = temperature
    if student_logits.shape[0] == 0:  # no valid position in the batch
        return student_logits.sum() * 0.0
    student_logits = _at_least_fp32(student_logits.reshape(-1, student_logits.shape[-1]))
    teacher_logits = _at_least_fp32(teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]))
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    p_teacher = F.softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * t**2


def hard_ce(student_logits: Tensor, labels: Tensor | None) -> Tensor:
    """Mean cross-entropy over labelled rows; exactly 0 (with a graph) when there are none."""
    if labels is None or not bool((labels != IGNORE_INDEX).any()):
        return student_logits.sum() * 0.0
    return F.cross_entropy(_at_least_fp32(student_logits), labels, ignore_index=IGNORE_INDEX)


def _at_least_fp32(logits: Tensor) -> Tensor:
    """fp16/bf16 logits are upcast (softmax and KL are precision-sensitive); fp64 stays fp64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _flatten(student: Tensor, teacher: Tensor, labels: Tensor | None, mask: Tensor | None):
    if student.shape != teacher.shape:
        raise ValueError(
            f"KDLoss: student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
            "differ; "
            "teacher and student must share the label set (num_labels) and the sequence positions"
        )
    if student.dim() == 2:
        return student, teacher, labels
    if mask is not None and mask.shape != student.shape[:-1]:
        raise ValueError(
            f"KDLoss: attention_mask {tuple(mask.shape)} must match the logits' positions "
            f"{tuple(student.shape[:-1])}"
        )
    keep = (
        torch.ones(student.shape[:-1], dtype=torch.bool, device=student.device)
        if mask is None
        else mask.bool()
    )
    flat_labels = None if labels is None else labels[keep]
    return student[keep], teacher[keep], flat_labels

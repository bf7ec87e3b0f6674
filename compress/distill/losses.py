"""Knowledge-distillation loss: ``α·CE(z_s, y) + (1−α)·T²·D(P_t, P_s)``; D is Hinton's forward KL by default,
or the reverse KL or the generalized JSD (`compress.distill.divergences`).

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

from compress.distill.divergences import Divergence, at_least_fp32, check_divergence, soft_divergence

IGNORE_INDEX = -100


class KDLoss(nn.Module):
    """Hard-label cross-entropy plus a temperature-scaled divergence to the teacher (Hinton et al., 2015).

    The default soft term is ``F.kl_div(log_softmax(z_s/T), softmax(z_t/T), reduction="batchmean") * T**2``:
    ``batchmean`` is the true KL per example (``"mean"`` would also divide by the number of classes) and
    the T² factor keeps the soft-term gradients on the same scale for every temperature. ``divergence``
    chooses KL(P_t ‖ P_s) (``forward_kl``), KL(P_s ‖ P_t) (``reverse_kl``, MiniLLM) or TRL GKD's
    ``β·KL(P_t ‖ M) + (1−β)·KL(P_s ‖ M)`` with ``M = β·P_t + (1−β)·P_s`` (``jsd``), each × T².

    Rows labelled -100 (or all rows when ``labels`` is None) are unlabelled: they enter the soft term
    only. The hard term is the mean cross-entropy over labelled rows (0 when a batch has none). Sequence
    outputs ``(B, L, V)`` are flattened to their valid positions ``(N, V)`` first, using
    ``attention_mask`` (padding excluded) when given. It meets `DistillationLoss`: ``hard_weight`` is α.

    Args:
        alpha: weight of the hard-label term, in [0, 1]; 0 is pure distillation, 1 plain fine-tuning.
        temperature: softmax temperature T > 0 of both distributions in the soft term.
        divergence: ``forward_kl`` (default), ``reverse_kl`` or ``jsd``.
        beta: for ``jsd``, the teacher's weight β in the mixture M, in (0, 1); 0.5 is the symmetric JSD.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 2.0,
        divergence: Divergence = "forward_kl",
        beta: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"KDLoss.alpha: {alpha!r} must be in [0, 1] (weight of the hard-label term)")
        if not temperature > 0:
            raise ValueError(f"KDLoss.temperature: {temperature!r} must be > 0 (typical values 1-8)")
        check_divergence(divergence, beta)
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.divergence, self.beta = divergence, float(beta)

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
        """``{"loss", "hard", "soft"}``: the total, the hard-label CE and the T²-scaled divergence."""
        student, teacher, labels = _flatten(student_logits, teacher_logits, labels, attention_mask)
        soft = soft_divergence(student, teacher, self.temperature, self.divergence, self.beta)
        hard = hard_ce(student, labels)
        return {"loss": self.alpha * hard + (1.0 - self.alpha) * soft, "hard": hard, "soft": soft}

    def extra_repr(self) -> str:
        kind = self.divergence + (f", beta={self.beta}" if self.divergence == "jsd" else "")
        return f"alpha={self.alpha}, temperature={self.temperature}, divergence={kind}"


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))`` averaged over rows (``batchmean``)."""
    return soft_divergence(student_logits, teacher_logits, temperature, "forward_kl")


def hard_ce(student_logits: Tensor, labels: Tensor | None, reduction: str = "mean") -> Tensor:
    """Cross-entropy over labelled rows, their mean (or ``reduction="sum"``); exactly 0 (with a graph) when
    there are none."""
    if labels is None or not bool((labels != IGNORE_INDEX).any()):
        return student_logits.sum() * 0.0
    return F.cross_entropy(
        at_least_fp32(student_logits), labels, ignore_index=IGNORE_INDEX, reduction=reduction
    )


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

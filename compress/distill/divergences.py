"""Soft divergences between the teacher's and the student's token (or class) distributions.

``forward_kl`` is KL(P_t ‖ P_s) (Hinton; mean-seeking), ``reverse_kl`` is KL(P_s ‖ P_t) (MiniLLM;
mode-seeking, often better for generation), ``jsd`` is the generalized Jensen-Shannon divergence of TRL's
GKD, ``β·KL(P_t ‖ M) + (1−β)·KL(P_s ‖ M)`` with ``M = β·P_t + (1−β)·P_s`` (β = 0.5: the symmetric JSD).
All are taken at temperature T, multiplied by T² (the soft-gradient scale then does not depend on T) and
averaged over rows (``batchmean``); rows are classes' logits ``(N, C)`` or valid token positions ``(N, V)``.

Example:
    >>> import torch
    >>> from compress.distill.divergences import soft_divergence
    >>> student, teacher = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    >>> kinds = ("forward_kl", "reverse_kl", "jsd")
    >>> [round(soft_divergence(student, teacher, 1.0, kind).item(), 4) for kind in kinds]
    [0.9826, 0.913, 0.2167]
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def soft_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    divergence: Divergence = "forward_kl",
    beta: float = 0.5,
) -> Tensor:
    """``T²·D`` between ``softmax(z_t/T)`` and ``softmax(z_s/T)``, averaged over rows (teacher detached).

    Args:
        student_logits: ``(N, V)`` (any leading shape is flattened).
        teacher_logits: the same shape.
        temperature: T > 0.
        divergence: ``forward_kl``, ``reverse_kl`` or ``jsd``.
        beta: the teacher's weight in the mixture of ``jsd``, in (0, 1).
    """
    if student_logits.shape[0] == 0:  # no valid position in the batch
        return student_logits.sum() * 0.0
    t = temperature
    student_logits = at_least_fp32(student_logits.reshape(-1, student_logits.shape[-1]))
    teacher_logits = at_least_fp32(teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]))
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    if divergence == "forward_kl":
        return F.kl_div(log_p_student, F.softmax(teacher_logits / t, dim=-1), reduction="batchmean") * t**2
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    if divergence == "reverse_kl":  # kl_div(input, target) = Σ target·(log target − input)
        return _kl(log_p_teacher, log_p_student) * t**2
    if divergence == "jsd":
        mixture = torch.logsumexp(
            torch.stack([log_p_teacher + math.log(beta), log_p_student + math.log(1.0 - beta)]), dim=0
        )
        return (beta * _kl(mixture, log_p_teacher) + (1.0 - beta) * _kl(mixture, log_p_student)) * t**2
    raise ValueError(f"divergence: {divergence!r} is not one of {', '.join(DIVERGENCES)}")


def check_divergence(divergence: str, beta: float, owner: str = "KDLoss") -> None:
    """Refuses an unknown divergence, or a ``jsd`` β outside (0, 1), naming the field and the fix."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"{owner}.divergence: {divergence!r} must be one of {', '.join(DIVERGENCES)}")
    if divergence == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(
            f"{owner}.beta: {beta!r} must be in (0, 1) for jsd (the divergence vanishes at the ends); "
            "use divergence='forward_kl' or 'reverse_kl' for the one-sided KLs"
        )


def _kl(log_input: Tensor, log_target: Tensor) -> Tensor:
    """KL(exp(log_target) ‖ exp(log_input)), averaged over rows."""
    return F.kl_div(log_input, log_target, reduction="batchmean", log_target=True)


def at_least_fp32(logits: Tensor) -> Tensor:
    """fp16/bf16 logits are upcast (softmax and KL are precision-sensitive); fp64 stays fp64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))

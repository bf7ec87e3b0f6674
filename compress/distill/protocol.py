"""`DistillationLoss`: what a distillation loss provides, so that `KDLoss`, a token-level loss or your own
trains a student in `DistillationModule` without subclassing anything.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from torch import Tensor
    >>> from compress.distill.protocol import DistillationLoss
    >>> class SoftOnly:  # KL to the teacher at T=1, no hard-label term
    ...     temperature, hard_weight = 1.0, 0.0
    ...     def components(self, student_logits: Tensor, teacher_logits: Tensor,
    ...             labels: Tensor | None = None, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
    ...         log_p, q = student_logits.log_softmax(-1), teacher_logits.softmax(-1)
    ...         soft = F.kl_div(log_p, q, reduction="batchmean")
    ...         return {"loss": soft, "soft": soft}
    >>> isinstance(SoftOnly(), DistillationLoss)
    True
    >>> SoftOnly().components(torch.zeros(2, 3), torch.zeros(2, 3))["loss"].item()
    0.0
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class DistillationLoss(Protocol):
    """The loss of a distillation run: two attributes and ``components``.

    Attributes:
        temperature: the softmax temperature at which the loss reads the teacher's logits; several
            teachers are mixed in probability space at it (`average_teacher_logits`). 1.0 for a loss that
            has none.
        hard_weight: how much the ``"hard"`` part weighs in ``"loss"`` (0 when there is no hard part).
            Under DDP the module re-weights ``hard`` so that the averaged gradient is that of the mean over
            all ranks' labelled rows, using this weight and nothing else.
    """

    temperature: float
    hard_weight: float

    def components(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{"loss": total, **parts}``: the scalar to minimise and named terms (logged as ``train/<name>``).

        Logits are ``(B, C)``, or ``(B, L, V)`` for token-level losses with the ``(B, L)`` mask; labels of
        -100 are unlabelled rows. With ``hard_weight > 0``, ``"hard"`` is the mean hard-label term over
        this batch's labelled rows and ``"loss"`` holds it as ``hard_weight * hard``.
        """
        ...


def reweight_hard(parts: dict[str, Tensor], hard_weight: float, factor: Tensor) -> dict[str, Tensor]:
    """``parts`` with ``"hard"`` scaled by ``factor`` and ``"loss"`` changed by ``hard_weight`` times as much.

    Under DDP each rank's hard part is a mean over its own labelled rows; the factor
    ``local_rows * world / all_rows`` makes the averaged gradient that of the mean over all ranks' rows.
    """
    hard = parts["hard"] * factor
    return {**parts, "loss": parts["loss"] + hard_weight * (hard - parts["hard"]), "hard": hard}


def check_loss(loss: object, field: str = "model.loss") -> DistillationLoss:
    """``loss``, after checking that it meets `DistillationLoss` (a clear error before the first step)."""
    if not isinstance(loss, DistillationLoss) or not callable(getattr(loss, "components", None)):
        missing = [n for n in ("temperature", "hard_weight", "components") if not hasattr(loss, n)]
        missing = missing or ["a callable components"]
        raise TypeError(
            f"{field}: {type(loss).__name__} is not a distillation loss (it lacks {', '.join(missing)}); "
            "give temperature and hard_weight attributes and components(student_logits, teacher_logits, "
            "labels, attention_mask) returning {'loss': ..., ...} (see compress.distill.DistillationLoss)"
        )
    return loss

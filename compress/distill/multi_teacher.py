"""Several teachers, one target: soft targets averaged in probability space.

Example:
    >>> import torch
    >>> from compress.distill.multi_teacher import average_teacher_logits
    >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    >>> average_teacher_logits([a, b], [0.5, 0.5], temperature=2.0).softmax(-1)
    tensor([[0.5000, 0.5000]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Teacher weights summing to 1 (uniform when None)."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"model.teacher_weights: {list(weights)!r} needs {count} non-negative weights with a "
            "positive sum, one per teacher"
        )
    return [w / sum(weights) for w in weights]


def average_teacher_logits(
    logits: Sequence[Tensor], weights: Sequence[float], temperature: float = 1.0
) -> Tensor:
    """Logits ``T·log Σ_k w_k softmax(z_k/T)``: their softmax at temperature T is the teachers' mixture.

    Averaging probabilities (not logits) keeps each teacher's confidence; returning logits lets any
    KD loss use the mixture unchanged.
    """
    if len(logits) == 1:
        return logits[0]
    mixture = sum(
        w * F.softmax(z.float() / temperature, dim=-1) for w, z in zip(weights, logits, strict=True)
    )
    return temperature * mixture.clamp_min(1e-12).log()

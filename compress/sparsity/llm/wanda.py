"""Wanda (Sun et al., 2023): prune the weights with the smallest ``|W_ij| · ‖X_j‖₂``, row by row.

A weight's score is its magnitude times the L2 norm of its input feature ``j`` over every real
(non-padding) calibration token, so a small weight reading an outlier feature outlives a larger one
reading a quiet feature. Wanda compares weights within an output row: each row loses exactly
``round(sparsity · in_features)`` weights (ties broken by position), or, with an N:M pattern, keeps the
N best of every M consecutive inputs. No weight is updated; only the mask comes from the data.

Example:
    >>> import torch
    >>> norms = InputNorms(3)
    >>> norms.add(torch.tensor([[1.0, 10.0, 0.1], [1.0, 10.0, 0.1]]))
    >>> weight = torch.tensor([[1.0, 0.2, 3.0], [-2.0, 0.5, 0.3]])
    >>> wanda_mask(weight, norms.sum_of_squares, sparsity=1 / 3).tolist()
    [[True, True, False], [True, True, False]]
    >>> wanda_mask(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([16.0, 4.0, 1.0, 0.0]), 0.5, nm=(2, 4))
    tensor([[ True,  True, False, False]])
"""

from __future__ import annotations

import torch

from compress.sparsity.magnitude import nm_mask


class InputNorms:
    """Running per-feature sum of squares of a Linear's inputs: Wanda's ``‖X_j‖₂²``, before the root.

    Example: ``norms = InputNorms(linear.in_features); norms.add(x)`` for each ``[tokens, features]`` batch.
    """

    def __init__(self, features: int, device: torch.device | str | None = None) -> None:
        self.sum_of_squares = torch.zeros(features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Count ``inputs`` ``[tokens, features]``: real tokens only, padding already dropped."""
        self.sum_of_squares += inputs.detach().float().pow(2).sum(0)
        self.tokens += inputs.shape[0]


def wanda_scores(weight: torch.Tensor, input_sq_norm: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · ‖X_j‖₂`` in float32, shaped like ``weight`` ``[out, in]``."""
    return weight.detach().abs().float() * input_sq_norm.to(weight.device).float().sqrt()


def wanda_mask(
    weight: torch.Tensor,
    input_sq_norm: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Keep-mask (``True`` = kept) of a Linear weight ``[out, in]`` by Wanda's score.

    Args:
        weight: the dense weight.
        input_sq_norm: per input feature, the sum of squares over the calibration tokens (`InputNorms`).
        sparsity: fraction of each row to prune; ignored when ``nm`` is given.
        nm: ``(n, m)`` to keep the ``n`` best scores of every ``m`` consecutive inputs of a row instead.
    """
    scores = wanda_scores(weight, input_sq_norm)
    if nm is not None:
        return nm_mask(scores, *nm)
    return keep_per_row(scores, round(sparsity * weight.shape[1]))


def keep_per_row(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask dropping the ``count`` lowest scores of every row (ties: the earlier position goes first)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count > 0:
        keep.scatter_(1, scores.argsort(dim=1, stable=True)[:, :count], False)
    return keep

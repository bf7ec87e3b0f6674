"""SparseGPT (Frantar & Alistarh, 2023): prune a Linear and update its remaining weights to make up for it.

Follows the reference ``fasterprune`` (github.com/IST-DASLab/sparsegpt): from ``H = 2/n · Σ XᵀX`` over the
calibration tokens, dead inputs (``H_ii = 0``) get ``H_ii = 1`` and a zero weight column, ``damp · mean
diag(H)`` is added to the diagonal, and ``U``, the upper Cholesky factor of ``H⁻¹``, drives the optimal
brain surgeon updates. Columns are visited in blocks of ``block_size``: at each block's start the weights
scoring lowest by ``w² / U_jj²`` are chosen (unstructured), or every M columns the N best of each row are
kept (N:M); pruning a column spreads its error over the block's later columns, and each block's errors
over all later columns.

One difference from the reference: it prunes ``int(sparsity · block) + 1`` weights of each block (plus
ties); here each block prunes its share of ``round(sparsity · rows · columns)`` so that every matrix lands
exactly on ``sparsity``, as the magnitude and Wanda masks do.

Example:
    >>> import torch
    >>> inputs = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    >>> hessian = Hessian(8)
    >>> hessian.add(inputs)
    >>> weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    >>> new, keep = sparsegpt_prune(weight, hessian.value(), sparsity=0.5)
    >>> int(keep.sum()), bool((new[~keep] == 0).all())
    (16, True)
    >>> error = lambda w: float((inputs @ (weight - w).T).pow(2).sum())
    >>> error(new) < error(weight * keep)  # the updates beat zeroing the same weights
    True
"""

from __future__ import annotations

import torch

from compress.sparsity.magnitude import prune_smallest


class Hessian:
    """Running ``2/n · Σ XᵀX`` of a Linear's inputs over ``n`` real tokens, summed in float64.

    Example: ``hessian = Hessian(linear.in_features); hessian.add(x)`` per batch, then ``hessian.value()``.
    """

    def __init__(self, features: int, device: torch.device | str | None = None) -> None:
        self.total = torch.zeros(features, features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Count ``inputs`` ``[tokens, features]``: real tokens only, padding already dropped."""
        inputs = inputs.detach().float()
        self.total += (inputs.T @ inputs).double()  # one batch in float32, the sum over batches in float64
        self.tokens += inputs.shape[0]

    def value(self) -> torch.Tensor:
        """``2/n · Σ XᵀX`` (zeros before any token is added)."""
        return self.total * (2 / max(self.tokens, 1))


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruned, updated weight (in ``weight``'s dtype) and its keep-mask (``True`` = kept).

    Args:
        weight: a Linear weight ``[out, in]``; not modified.
        hessian: ``2/n · Σ XᵀX`` ``[in, in]`` of its inputs (`Hessian`).
        sparsity: fraction of the matrix to prune; ignored when ``nm`` is given.
        nm: ``(n, m)`` to keep ``n`` of every ``m`` consecutive inputs of a row; ``block_size`` must then
            be a multiple of ``m``.
        block_size: columns updated together before their errors reach the later columns.
        damp: fraction of the mean of ``diag(H)`` added to the diagonal.
    """
    rows, columns = weight.shape
    new = weight.detach().float().clone()
    upper, dead = inverse_factor(hessian.to(new.device), damp)
    new[:, dead] = 0
    pruned = torch.zeros_like(new, dtype=torch.bool)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        count = round(sparsity * rows * end) - round(sparsity * rows * start)  # blocks add up exactly
        errors = _prune_block(new[:, start:end], upper[start:end, start:end], pruned[:, start:end], count, nm)
        new[:, end:] -= errors @ upper[start:end, end:]
    return new.to(weight.dtype), ~pruned


def inverse_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper Cholesky factor of the dampened ``H⁻¹`` (float32, computed in float64); the dead inputs."""
    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    h.diagonal().add_(damp * h.diagonal().mean())
    lower, info = torch.linalg.cholesky_ex(h)
    if info:
        raise ValueError(
            f"SparseGPT: the calibration Hessian is not positive definite even with damp={damp}; raise damp "
            "(0.01 by default) or give more calibration sequences."
        )
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True).float(), dead


def _prune_block(
    block: torch.Tensor,
    upper: torch.Tensor,
    pruned: torch.Tensor,
    count: int,
    nm: tuple[int, int] | None,
) -> torch.Tensor:
    """Prune and update ``block`` ``[rows, b]`` in place, marking ``pruned``; return the scaled errors."""
    diag = upper.diagonal()
    if nm is None:
        scores = block.pow(2) / diag.pow(2)
        pruned |= prune_smallest(scores.flatten(), count).view_as(block)
    errors = torch.zeros_like(block)
    for i in range(block.shape[1]):
        if nm is not None and i % nm[1] == 0:
            pruned[:, i : i + nm[1]] = _nm_pruned(block[:, i : i + nm[1]], diag[i : i + nm[1]], nm[0])
        kept = block[:, i].masked_fill(pruned[:, i], 0)
        errors[:, i] = (block[:, i] - kept) / diag[i]
        block[:, i:] -= errors[:, i : i + 1] * upper[i : i + 1, i:]
        block[:, i] = kept  # what the update left there up to rounding; pruned entries exactly zero
    return errors


def _nm_pruned(group: torch.Tensor, diag: torch.Tensor, n: int) -> torch.Tensor:
    """In each row of ``group`` ``[rows, m]``, all but the ``n`` highest ``w² / U_jj²``."""
    scores = group.pow(2) / diag.pow(2)
    pruned = torch.ones_like(group, dtype=torch.bool)
    return pruned.scatter_(1, scores.topk(n, dim=1).indices, False)

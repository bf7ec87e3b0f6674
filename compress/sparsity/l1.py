"""L1 and group-lasso sparse training: penalties, their subgradients, and proximal (shrinkage) steps.

Two ways to train with ``λ·Σ|w|``:

- *subgradient*: add ``λ·sign(w)`` to the gradient after backward, the same as adding the term to the
  loss; weights get small but rarely exactly zero.
- *proximal*: after each optimizer step apply soft-thresholding ``w ← sign(w)·max(|w| − lr·λ, 0)``,
  which produces exact zeros (ISTA; with Adam it is the usual heuristic, the threshold uses the lr).

Group lasso ``λ·Σ_g ||w_g||₂`` treats the weights that would be removed together (an FFN channel: a row
of ``intermediate.dense`` and a column of ``output.dense``) as one group, so whole channels go to zero.

Example:
    >>> import torch
    >>> w = torch.tensor([0.5, -0.05, 0.2])
    >>> soft_threshold_(w, 0.1).tolist()
    [0.4000000059604645, -0.0, 0.10000000149011612]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

Slice = tuple[nn.Parameter, int, torch.Tensor]  # weight, dimension, channel indices along it
ChannelGroup = list[Slice]


def l1_penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """``Σ|w|`` over all tensors."""
    return sum((w.detach().abs().sum() for w in weights), torch.tensor(0.0))


def near_zero_fraction(weights: Sequence[torch.Tensor], tolerance: float) -> float:
    """Fraction of entries with ``|w| <= tolerance``."""
    total = sum(w.numel() for w in weights)
    small = sum(int((w.detach().abs() <= tolerance).sum()) for w in weights)
    return small / total if total else 0.0


@torch.no_grad()
def add_l1_subgradient(weights: Iterable[nn.Parameter], strength: float) -> None:
    """``grad += strength·sign(w)`` for every weight that has a gradient."""
    for w in weights:
        if w.grad is not None:
            w.grad.add_(torch.sign(w), alpha=strength)


@torch.no_grad()
def soft_threshold_(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """In place ``w ← sign(w)·max(|w| − threshold, 0)``; returns ``weight``."""
    shrunk = (weight.abs() - threshold).clamp_(min=0.0)
    return weight.copy_(torch.sign(weight) * shrunk)


def _channel_view(weight: torch.Tensor, dim: int, idxs: torch.Tensor) -> torch.Tensor:
    """``[channels, rest]`` view of the slices ``weight.index_select(dim, idxs)``."""
    return weight.index_select(dim, idxs.to(weight.device)).movedim(dim, 0).reshape(len(idxs), -1)


def group_norms(group: ChannelGroup) -> torch.Tensor:
    """L2 norm of every channel of a group, over all the slices coupled with it."""
    squares = sum(_channel_view(w.detach(), dim, idxs).pow(2).sum(1) for w, dim, idxs in group)
    return squares.sqrt()


def group_lasso_penalty(groups: Iterable[ChannelGroup]) -> torch.Tensor:
    """``Σ_g Σ_channels ||w_channel||₂``."""
    return sum((group_norms(g).sum() for g in groups), torch.tensor(0.0))


def _scale_shape(weight: torch.Tensor, dim: int) -> list[int]:
    shape = [1] * weight.dim()
    shape[dim] = -1
    return shape


@torch.no_grad()
def add_group_lasso_subgradient(groups: Iterable[ChannelGroup], strength: float, eps: float = 1e-12) -> None:
    """``grad += strength·w / ||w_channel||`` on every slice of every channel (zero for a zero channel)."""
    for group in groups:
        inverse = 1.0 / group_norms(group).clamp_min(eps)
        for w, dim, idxs in group:
            if w.grad is None:
                continue
            idxs = idxs.to(w.device)
            scale = inverse.to(w.device).view(_scale_shape(w, dim))
            w.grad.index_add_(dim, idxs, w.index_select(dim, idxs) * scale, alpha=strength)


@torch.no_grad()
def group_soft_threshold_(group: ChannelGroup, threshold: float, eps: float = 1e-12) -> None:
    """Block soft-thresholding: every channel scaled by ``max(0, 1 − threshold/||w_channel||)``."""
    factor = (1.0 - threshold / group_norms(group).clamp_min(eps)).clamp_(min=0.0)
    for w, dim, idxs in group:
        idxs = idxs.to(w.device)
        scaled = w.index_select(dim, idxs) * factor.to(w.device).view(_scale_shape(w, dim))
        w.index_copy_(dim, idxs, scaled)

"""Magnitude masks: exact counts, monotone (a pruned weight stays pruned), global, per-layer or N:M.

A mask is a bool tensor shaped like its weight, ``True`` where the weight is kept. Scores are ``|w|``;
weights pruned by the previous masks score below every live weight, so they are pruned first and a
growing target never revives them. Ties at the threshold are broken by position, so exactly
``round(sparsity · n)`` weights are pruned (per tensor, or over all tensors with ``scope="global"``).

Example:
    >>> import torch
    >>> w = {"a": torch.tensor([[0.1, -2.0], [3.0, 0.2]]), "b": torch.tensor([[0.05, 1.0]])}
    >>> masks = magnitude_masks(w, sparsity=0.5, scope="global")
    >>> masks["a"].tolist(), masks["b"].tolist()
    ([[False, True], [True, False]], [[False, True]])
    >>> nm_mask(torch.tensor([[4.0, -1.0, 3.0, 0.5]]), n=2, m=4).tolist()
    [[True, False, True, False]]
"""

from __future__ import annotations

from typing import Literal

import torch

Scope = Literal["global", "layer"]


def prune_smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Bool tensor marking exactly ``count`` entries of the flat ``scores`` with the lowest values."""
    pruned = torch.zeros_like(scores, dtype=torch.bool)
    if count <= 0:
        return pruned
    threshold = scores.kthvalue(count).values
    pruned = scores < threshold
    ties = (scores == threshold).nonzero().flatten()
    pruned[ties[: count - int(pruned.sum())]] = True
    return pruned


def _scores(weight: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    scores = weight.detach().abs().flatten().float()
    if previous is not None:
        scores = scores.masked_fill(~previous.flatten().to(scores.device), -1.0)
    return scores


def magnitude_masks(
    weights: dict[str, torch.Tensor],
    sparsity: float,
    scope: Scope = "global",
    previous: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the ``sparsity`` fraction of smallest-magnitude weights.

    Args:
        weights: tensors by name.
        sparsity: total fraction to prune, in [0, 1).
        scope: ``"global"`` ranks all weights together; ``"layer"`` prunes each tensor to ``sparsity``.
        previous: earlier masks; their pruned entries stay pruned.
    """
    previous = previous or {}
    scores = {name: _scores(w, previous.get(name)) for name, w in weights.items()}
    if scope == "layer":
        pruned = {name: prune_smallest(s, round(sparsity * s.numel())) for name, s in scores.items()}
    elif scope == "global":
        flat = torch.cat(list(scores.values()))
        pruned_flat = prune_smallest(flat, round(sparsity * flat.numel()))
        pruned = dict(zip(scores, pruned_flat.split([s.numel() for s in scores.values()]), strict=True))
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}.")
    return {name: ~pruned[name].view(w.shape).to(w.device) for name, w in weights.items()}


def nm_mask(weight: torch.Tensor, n: int, m: int, previous: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask with at most ``n`` non-zeros in every ``m`` consecutive input weights (2:4 sparsity).

    Groups run along the input dimension (the last one of a Linear weight ``[out, in]``; a Conv weight's
    input channels and kernel are flattened together), as sparse tensor cores expect.
    """
    rows = weight.detach().reshape(weight.shape[0], -1)
    if rows.shape[1] % m:
        raise ValueError(f"N:M pruning needs the input size to be a multiple of m={m}; got {rows.shape[1]}.")
    scores = _scores(rows, None if previous is None else previous.reshape(rows.shape)).view(-1, m)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(1, scores.topk(n, dim=1).indices, True)
    if previous is not None:
        keep &= previous.reshape(-1, m).to(keep.device)
    return keep.view(weight.shape)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` → None, ``"2:4"`` → (2, 4); anything else is an error naming the field."""
    if pattern == "unstructured":
        return None
    try:
        n, m = (int(part) for part in pattern.split(":"))
    except ValueError:
        n = m = 0
    if not 0 < n < m:
        raise ValueError(f"pattern must be 'unstructured' or 'N:M' with 0 < N < M ('2:4'), got {pattern!r}.")
    return n, m


@torch.no_grad()
def apply_masks(masks: dict[str, torch.Tensor], targets: dict[str, torch.nn.Module]) -> None:
    """Multiply each mask into ``targets[name].weight`` in place; a mask moves to its weight's device once."""
    for name, mask in masks.items():
        weight = targets[name].weight
        if mask.device != weight.device:
            mask = masks[name] = mask.to(weight.device)
        weight.mul_(mask)


def mask_mismatch(
    masks: dict[str, torch.Tensor], targets: dict[str, torch.nn.Module]
) -> tuple[str, tuple, str | tuple] | None:
    """The first mask with no target or another shape: (name, mask shape, weight shape or "missing")."""
    for name, mask in masks.items():
        module = targets.get(name)
        if module is None or module.weight.shape != mask.shape:
            return name, tuple(mask.shape), "missing" if module is None else tuple(module.weight.shape)
    return None


def sparsity_of(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of pruned entries over all masks."""
    total = sum(mask.numel() for mask in masks.values())
    kept = sum(int(mask.sum()) for mask in masks.values())
    return 1.0 - kept / total if total else 0.0

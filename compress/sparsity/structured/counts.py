"""How many heads and FFN channels go: ratios of a structure, rounded down, minus what is already gone."""

from __future__ import annotations

import math

from compress.sparsity.structured.blocks import Structure

EPS = 1e-6  # ratio * count is floored; this absorbs float error such as 0.57 * 100 = 56.99999999999999


def check_ratio(field: str, value: float) -> None:
    """A pruning ratio is a fraction in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{field}: {value!r} must be in [0, 1) (the fraction of them removed)")


def removal_counts(
    now: Structure, head_ratio: float, ffn_ratio: float, uniform_per_layer: bool, of: Structure | None = None
) -> tuple[list[int], list[int]]:
    """Heads and channels still to remove, per layer (uniform) or in total (one-element lists), so that
    ``ratio`` of the structure ``of`` (default ``now``) is gone; what is already gone counts."""
    of = of or now
    if len(of.heads) != len(now.heads):
        raise ValueError(f"of: {len(of.heads)} layers, but the model has {len(now.heads)}")

    def count(current: list[int], original: list[int], ratio: float) -> list[int]:
        if not uniform_per_layer:
            current, original = [sum(current)], [sum(original)]
        return [max(0, math.floor(ratio * o + EPS) - (o - c)) for c, o in zip(current, original, strict=True)]

    return count(now.heads, of.heads, head_ratio), count(now.channels, of.channels, ffn_ratio)

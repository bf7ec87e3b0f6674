"""Gradual sparsity schedule of Zhu & Gupta (2017): cubic ramp, cumulative targets.

``s_t = s_f + (s_i − s_f)·(1 − (t − t_0)/(t_end − t_0))³`` at the pruning steps ``t_0, t_0 + Δt, …`` and
always at ``t_end``, where the target is reached exactly. Each value is the *total* sparsity wanted at
that step, not an amount to prune from what is left, so nothing compounds.

Example:
    >>> schedule = CubicSparsitySchedule(target_sparsity=0.8, start_step=0, end_step=100, frequency=10)
    >>> [round(schedule.sparsity_at(t), 3) for t in (0, 50, 100, 500)]
    [0.0, 0.7, 0.8, 0.8]
    >>> [t for t in range(0, 120) if schedule.is_pruning_step(t)][:3]
    [0, 10, 20]
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CubicSparsitySchedule:
    """Cubic ramp from ``initial_sparsity`` at ``start_step`` to ``target_sparsity`` at ``end_step``.

    Args:
        target_sparsity: final fraction of zeros, in [0, 1).
        initial_sparsity: fraction of zeros at ``start_step``, in [0, target_sparsity].
        start_step: first optimizer step that prunes.
        end_step: optimizer step where ``target_sparsity`` is reached; no pruning after it.
        frequency: prune every this many optimizer steps between the two.
    """

    target_sparsity: float = 0.5
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int = 1000
    frequency: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}.")
        if not 0.0 <= self.initial_sparsity <= self.target_sparsity:
            raise ValueError(
                f"initial_sparsity must be in [0, target_sparsity={self.target_sparsity}], "
                f"got {self.initial_sparsity}."
            )
        if self.start_step < 0 or self.end_step < self.start_step:
            raise ValueError(
                f"need 0 <= start_step <= end_step, got start_step={self.start_step}, "
                f"end_step={self.end_step}."
            )
        if self.frequency < 1:
            raise ValueError(f"frequency must be a positive number of steps, got {self.frequency}.")

    def sparsity_at(self, step: int) -> float:
        """Total sparsity wanted after optimizer step ``step`` (0 before ``start_step``)."""
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.target_sparsity
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        drop = self.target_sparsity - self.initial_sparsity
        return self.target_sparsity - drop * (1.0 - progress) ** 3

    def is_pruning_step(self, step: int) -> bool:
        """Whether masks are recomputed at ``step``."""
        if step < self.start_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.start_step) % self.frequency == 0

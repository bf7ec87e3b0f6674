"""Distillation maths in plain torch (no Lightning): usable from any training loop."""

from compress.distill.losses import KDLoss

__all__ = ["KDLoss"]

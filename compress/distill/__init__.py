"""Distillation maths in plain torch (no Lightning): usable from any training loop."""

from compress.distill.losses import KDLoss
from compress.distill.protocol import DistillationLoss
from compress.distill.teacher_cache import TeacherCache

__all__ = ["DistillationLoss", "KDLoss", "TeacherCache"]

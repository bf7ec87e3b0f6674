"""LightningModules: `TaskModule` (fine-tune on labels) and `DistillationModule` (teacher -> student)."""

from compress.modules.distillation import DistillationModule
from compress.modules.task import TaskModule

__all__ = ["DistillationModule", "TaskModule"]

"""Students, adapters and selective tuning (plain torch / transformers / peft, no Lightning)."""

from compress.peft.adapters import attach_adapter
from compress.peft.bottleneck import BottleneckConfig
from compress.peft.multitask import MultiTaskAdapters
from compress.peft.selective import SelectiveTuning
from compress.peft.student import StudentFromTeacher, build_student, layer_container

__all__ = [
    "BottleneckConfig",
    "MultiTaskAdapters",
    "SelectiveTuning",
    "StudentFromTeacher",
    "attach_adapter",
    "build_student",
    "layer_container",
]

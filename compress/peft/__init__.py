"""Student construction and parameter-efficient tuning (plain torch / transformers, no Lightning)."""

from compress.peft.student import StudentFromTeacher, build_student, layer_container

__all__ = ["StudentFromTeacher", "build_student", "layer_container"]

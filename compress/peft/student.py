"""Build a smaller student from a teacher: keep its embeddings and a chosen subset of its layers.

Example:
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from compress.peft import StudentFromTeacher
    >>> teacher = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=6,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100, num_labels=3))
    >>> student = StudentFromTeacher(layers=[0, 2, 4]).build(teacher)
    >>> student.config.num_hidden_layers, student.config.num_labels
    (3, 3)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel


@dataclass
class StudentFromTeacher:
    """How to derive a student from a teacher (DistilBERT-style initialisation).

    Give ``layers`` (teacher layer indices to copy, e.g. ``[0, 2, 4]`` of 6) or ``num_hidden_layers``
    (k layers spread uniformly: student layer i copies teacher layer ``round((i+1)·L/k) − 1``).
    Embeddings, pooler and classifier head (or a causal LM's final norm and output embedding) are copied
    too; the result is a stock model of the teacher's class, with ``config.num_hidden_layers`` (and
    per-layer settings such as ``layer_types``) set. Works for BERT-style encoders and Llama-family
    decoders alike.

    Args:
        layers: teacher layer indices to keep, in order.
        num_hidden_layers: number of layers when ``layers`` is not given.
        source: model to copy from instead of the distillation teacher (a folder, an alias such as
            ``minilm-l6``); None uses the teacher. Needed when a `TaskModule` trains the student alone.
        copy_layer_weights: False keeps only the embeddings (and head) and initialises layers at random.
    """

    layers: list[int] | None = None
    num_hidden_layers: int | None = None
    source: str | None = None
    copy_layer_weights: bool = True

    def __post_init__(self) -> None:
        if (self.layers is None) == (self.num_hidden_layers is None):
            raise ValueError(
                "StudentFromTeacher: give exactly one of `layers` (e.g. [0, 2, 4]) or "
                "`num_hidden_layers` (e.g. 3)"
            )
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise ValueError(
                f"StudentFromTeacher.layers: {self.layers!r} must be distinct teacher layer indices"
            )
        if self.num_hidden_layers is not None and self.num_hidden_layers < 1:
            raise ValueError(f"StudentFromTeacher.num_hidden_layers: {self.num_hidden_layers!r} must be >= 1")

    def teacher_layers(self, teacher_depth: int) -> list[int]:
        """The teacher layer copied into each student layer."""
        if self.layers is not None:
            bad = [i for i in self.layers if not 0 <= i < teacher_depth]
            if bad:
                raise ValueError(
                    f"StudentFromTeacher.layers: {bad} outside the teacher's {teacher_depth} "
                    f"layers (valid: 0..{teacher_depth - 1})"
                )
            return list(self.layers)
        k = self.num_hidden_layers
        if k > teacher_depth:
            raise ValueError(
                f"StudentFromTeacher.num_hidden_layers: {k} exceeds the teacher's {teacher_depth}"
            )
        return [round((i + 1) * teacher_depth / k) - 1 for i in range(k)]

    def build(self, teacher: PreTrainedModel) -> PreTrainedModel:
        return build_student(
            teacher, self.teacher_layers(teacher.config.num_hidden_layers), self.copy_layer_weights
        )


PER_LAYER_SETTINGS = ("layer_types",)


def layer_container(model: nn.Module) -> str:
    """Name of the `nn.ModuleList` holding the transformer layers (e.g. ``bert.encoder.layer``)."""
    depth = model.config.num_hidden_layers
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not names:
        raise ValueError(
            f"cannot find the {depth} transformer layers of {type(model).__name__}: no ModuleList "
            "of that length; build the student with num_hidden_layers through its config instead"
        )
    return min(names, key=len)  # the outermost list, not a per-layer sub-list of the same length


def build_student(
    teacher: PreTrainedModel, layers: list[int], copy_layer_weights: bool = True
) -> PreTrainedModel:
    """A new model of the teacher's class with ``len(layers)`` layers copied from the given teacher layers."""
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(layers)
    for key in PER_LAYER_SETTINGS:  # e.g. Qwen's sliding/full attention per layer follows its layer
        if isinstance(getattr(config, key, None), list):
            setattr(config, key, [getattr(teacher.config, key)[i] for i in layers])
    student = type(teacher)(config)
    container = layer_container(teacher)
    pattern = re.compile(re.escape(container) + r"\.(\d+)\.")
    student_index = {teacher_idx: student_idx for student_idx, teacher_idx in enumerate(layers)}
    state = {}
    for key, value in teacher.state_dict().items():
        match = pattern.match(key)
        if match is None:
            state[key] = value
        elif copy_layer_weights and int(match.group(1)) in student_index:
            state[f"{container}.{student_index[int(match.group(1))]}.{key[match.end() :]}"] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or (copy_layer_weights and missing):
        raise RuntimeError(
            f"student construction mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return student.to(next(teacher.parameters()).device)

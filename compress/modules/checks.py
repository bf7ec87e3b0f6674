"""Checks between a model and its data (run in ``setup``), its teacher, or a checkpoint (when it loads), so
bad pairs fail before the first step. A check raises or returns; it never changes what it checks.

Example:
    >>> from compress.modules.checks import check_num_labels
    >>> check_num_labels(3)  # fine: returns None
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from compress.assets import resolve_model_source
from compress.data.tokenizer import load_tokenizer, same_tokenizer
from compress.modules.loading import task_of


def check_model_matches_data(
    model: nn.Module, datamodule, field: str, tokenizer_attr: str = "tokenizer"
) -> None:
    """The data is for the model's task (classification or language modelling); for a classifier at least
    two classes, the label count and a teacher's label names agree; vocabulary and positions fit.

    Changes nothing: `name_labels` gives the model the data's label names.
    """
    data_task = getattr(datamodule, "task", "classification" if hasattr(datamodule, "num_labels") else None)
    if data_task is None:
        return
    _check_task(model, datamodule, data_task, field)
    if data_task == "classification":
        _check_labels(model, datamodule, field)
    _check_vocabulary(model, getattr(datamodule, tokenizer_attr, None), field)
    positions = getattr(model.config, "max_position_embeddings", None)
    setting = "max_length" if data_task == "classification" else "block_size"
    length = getattr(datamodule, "hparams", {}).get(setting)
    if positions is not None and length is not None and length > positions:
        raise ValueError(
            f"data.{setting}: {length} exceeds the {positions} positions of {field}; "
            f"set data.{setting} <= {positions}"
        )


def _check_task(model: nn.Module, datamodule, data_task: str, field: str) -> None:
    name, data = type(model).__name__, type(datamodule).__name__
    if task_of(model) == "causal_lm" and data_task != "causal_lm":
        raise ValueError(
            f"{field}: {name} is a causal language model but the data ({data}) is labelled text for "
            "classification; use compress.data.LanguageModelingDataModule, or a sequence-classification model"
        )
    if task_of(model) != "causal_lm" and data_task == "causal_lm":
        raise ValueError(
            f"{field}: {name} is not a causal language model but the data ({data}) is for language "
            "modelling; use a causal LM (such as smollm2-135m), or compress.data.TextClassificationDataModule"
        )


def _check_vocabulary(model: nn.Module, tokenizer, field: str) -> None:
    vocabulary = model.get_input_embeddings().num_embeddings
    if tokenizer is not None and len(tokenizer) > vocabulary:
        raise ValueError(
            f"{field}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings only "
            f"{vocabulary}; "
            "use the model's own tokenizer (data.tokenizer / data.teacher_tokenizer)"
        )


def _check_labels(model: nn.Module, datamodule, field: str) -> None:
    if datamodule.num_labels < 2:
        raise ValueError(
            f"data.label_column: {datamodule.hparams.source!r} has a single class {datamodule.label_names}; "
            "a classifier needs rows of at least 2 classes: check that data.label_column is the label "
            "column and that the data holds every class"
        )
    config = model.config
    if datamodule.num_labels != config.num_labels:
        raise ValueError(
            f"{field}: the model head has {config.num_labels} labels but the data "
            f"({datamodule.hparams.source!r}) has {datamodule.num_labels} ({datamodule.label_names}); "
            f"set model num_labels to "
            f"{datamodule.num_labels} or use a model fine-tuned on this label set"
        )
    if field.startswith("model.teacher"):
        _check_label_names(config, datamodule.label_names, field)


def check_num_labels(num_labels: int | None) -> None:
    """A classifier needs at least two classes (``num_labels`` comes from the data through the CLI)."""
    if num_labels is not None and num_labels < 2:
        raise ValueError(
            f"model.num_labels: {num_labels}; a classifier needs at least 2 classes (the CLI takes the count "
            "from the data: check that data.label_column is the label column and that the data holds every "
            "class)"
        )


def check_teacher_student(teacher: nn.Module, student: nn.Module, num_labels: int | None) -> None:
    """Teacher and student have the same task; a classifier pair and the data (``num_labels``) have the
    same label count."""
    if task_of(teacher) != task_of(student):
        raise ValueError(
            f"model.student: {type(student).__name__} ({task_of(student)}) cannot learn from the teacher "
            f"{type(teacher).__name__} ({task_of(teacher)}); give a student of the teacher's kind, or "
            "build it from the teacher with StudentFromTeacher"
        )
    if task_of(teacher) == "causal_lm":
        return
    check_num_labels(num_labels)
    t, s = teacher.config.num_labels, student.config.num_labels
    if t != s:
        raise ValueError(
            f"model.student: the student has {s} labels, the teacher {t}; they must agree "
            "(build the student from the teacher, or load one with the teacher's label set)"
        )
    if num_labels is not None and num_labels != t:
        raise ValueError(
            f"model.num_labels: the data has {num_labels} labels but the teacher {t}; use a "
            "teacher fine-tuned on this data"
        )


def check_distillation_settings(teachers: int, intermediate, teacher_cache) -> None:
    """Layer matching takes one teacher, and the teacher at every step (no cache)."""
    if intermediate is not None and teachers > 1:
        raise ValueError(
            "model.intermediate: layer matching takes a single teacher; drop `intermediate` "
            "or give one teacher"
        )
    if teacher_cache is not None and intermediate is not None:
        raise ValueError(
            "model.teacher_cache: intermediate distillation needs the teacher's hidden states at every "
            "step; drop teacher_cache or intermediate"
        )


def _check_label_names(config, names: list[str], field: str) -> None:
    """A teacher's label names (when it has real ones) are the data's, in the same id order."""
    own = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
    if not own or all(re.fullmatch(r"LABEL_\d+", name) for name in own) or own == list(names):
        return
    fix = (
        f"set data.label_names to {own} (the teacher's id order)"
        if sorted(own) == sorted(names)
        else "use a teacher fine-tuned on this label set"
    )
    raise ValueError(
        f"{field}: the teacher's labels are {own} (in id order) but the data's are {names}; {fix}"
    )


def check_checkpoint_matches(module: nn.Module, state: dict[str, Tensor], field: str = "ckpt_path") -> None:
    """The checkpoint's weights belong to ``module``: none it lacks, none of another shape, none missing."""
    own = module.state_dict()
    foreign = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    reshaped = [
        f"{key} {tuple(state[key].shape)} instead of {tuple(own[key].shape)}"
        for key in sorted(set(state) & set(own))
        if state[key].shape != own[key].shape
    ]
    if foreign or reshaped or missing:
        example = (foreign or reshaped or [f"{missing[0]} not in the checkpoint"])[0]
        raise ValueError(
            f"{field}: the checkpoint holds another model's weights ({len(foreign)} this model lacks, "
            f"{len(reshaped)} of another shape, {len(missing)} of this model missing; e.g. {example}); pass "
            "a checkpoint written with this model's settings, or leave ckpt_path out to start afresh"
        )


def check_teachers_agree(teachers: nn.ModuleList) -> str:
    """All teachers have one task (classification or causal LM); returns it."""
    tasks = [task_of(t) for t in teachers]
    if len(set(tasks)) > 1:
        raise ValueError(
            f"model.teacher: the teachers mix tasks ({tasks}); give only classifiers or only causal LMs"
        )
    return tasks[0]


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(
            f"model.logit_chunk_size: {chunk_size!r} must be a positive number of tokens, or null to "
            "compute the student's logits whole"
        )


def check_same_tokenizer(teachers, student) -> None:
    """Token-level distillation compares next-token distributions: a causal-LM student given as a folder or
    alias must have the tokenizer of every teacher given as one (when both folders hold a tokenizer)."""
    if not isinstance(student, str):
        return
    for teacher in teachers if isinstance(teachers, (list, tuple)) else [teachers]:
        if isinstance(teacher, str):
            _check_tokenizer_pair(teacher, student)


def check_tokenizer_matches(source, tokenizer, field: str) -> None:
    """A model given as a folder or alias whose own tokenizer maps tokens to other ids than the data's
    ``tokenizer`` (even at the same vocabulary size) would read every id as another token: refused."""
    if not isinstance(source, str) or tokenizer is None or not has_tokenizer_files(source):
        return
    try:
        own = load_tokenizer(source, field)
    except ValueError:  # files transformers cannot read: the data's tokenizer is what is used
        return
    if same_tokenizer(own, tokenizer):
        return
    theirs, data = own.get_vocab(), tokenizer.get_vocab()
    token = next((t for t in sorted(data) if theirs.get(t) != data[t]), None) or "(the tokenizer class)"
    raise ValueError(
        f"{field}: its tokenizer ({source!r}) turns text into other ids than data.tokenizer "
        f"(e.g. {token!r}: {theirs.get(token)} against {data.get(token)}); set data.teacher_tokenizer to "
        f"{source!r} so that it gets its own tokenisation, or use its tokenizer as data.tokenizer"
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")


def has_tokenizer_files(source: str) -> bool:
    """Whether the folder (or alias) ``source`` holds a tokenizer of its own; transformers would otherwise
    make up an empty one for a bare model folder."""
    try:
        folder = Path(resolve_model_source(source))
    except FileNotFoundError:
        return False
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


def _check_tokenizer_pair(teacher: str, student: str) -> None:
    try:
        ours, theirs = load_tokenizer(student, "model.student"), load_tokenizer(teacher, "model.teacher")
    except ValueError:  # a folder without tokenizer files: the data's tokenizer is checked in setup
        return
    if not same_tokenizer(ours, theirs):
        raise ValueError(
            f"model.student: its tokenizer ({student!r}, {len(ours):,} tokens) differs from the teacher's "
            f"({teacher!r}, {len(theirs):,} tokens); token-level distillation needs one vocabulary "
            "(cross-tokenizer distillation is not supported yet): use a student with the teacher's "
            "tokenizer, e.g. StudentFromTeacher"
        )

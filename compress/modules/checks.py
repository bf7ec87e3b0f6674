"""Checks between a model and its data (run in ``setup``) or a checkpoint (when it loads), so bad pairs
fail before the first step."""

from __future__ import annotations

import re

from torch import Tensor, nn


def check_model_matches_data(
    model: nn.Module, datamodule, field: str, tokenizer_attr: str = "tokenizer"
) -> None:
    """At least two classes; label count, a teacher's label names and vocabulary agree; the model's config
    learns the data's label names."""
    if datamodule is None or not hasattr(datamodule, "num_labels"):
        return
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
    tokenizer = getattr(datamodule, tokenizer_attr, None)
    vocabulary = model.get_input_embeddings().num_embeddings
    if tokenizer is not None and len(tokenizer) > vocabulary:
        raise ValueError(
            f"{field}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings only "
            f"{vocabulary}; "
            "use the model's own tokenizer (data.tokenizer / data.teacher_tokenizer)"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and datamodule.hparams.max_length > positions:
        raise ValueError(
            f"data.max_length: {datamodule.hparams.max_length} exceeds the {positions} positions of {field}; "
            f"set data.max_length <= {positions}"
        )
    config.id2label = dict(enumerate(datamodule.label_names))
    config.label2id = {name: i for i, name in config.id2label.items()}


def check_num_labels(num_labels: int | None) -> None:
    """A classifier needs at least two classes (``num_labels`` comes from the data through the CLI)."""
    if num_labels is not None and num_labels < 2:
        raise ValueError(
            f"model.num_labels: {num_labels}; a classifier needs at least 2 classes (the CLI takes the count "
            "from the data: check that data.label_column is the label column and that the data holds every "
            "class)"
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
    """The checkpoint's weights belong to ``module``: none it lacks, none of another shape."""
    own = module.state_dict()
    foreign = sorted(set(state) - set(own))
    reshaped = [
        f"{key} {tuple(state[key].shape)} instead of {tuple(own[key].shape)}"
        for key in sorted(set(state) & set(own))
        if state[key].shape != own[key].shape
    ]
    if foreign or reshaped:
        raise ValueError(
            f"{field}: the checkpoint holds another model's weights ({len(foreign)} this model lacks, "
            f"{len(reshaped)} of another shape; e.g. {(foreign or reshaped)[0]}); pass a checkpoint written "
            "with this model's settings, or leave ckpt_path out to start afresh"
        )

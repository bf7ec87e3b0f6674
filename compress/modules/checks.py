"""Checks between a model and its data, run in ``setup`` so bad pairs fail before the first step."""

from __future__ import annotations

from torch import nn


def check_model_matches_data(
    model: nn.Module, datamodule, field: str, tokenizer_attr: str = "tokenizer"
) -> None:
    """Label count and vocabulary agree; the model's config learns the data's label names."""
    if datamodule is None or not hasattr(datamodule, "num_labels"):
        return
    config = model.config
    if datamodule.num_labels != config.num_labels:
        raise ValueError(
            f"{field}: the model head has {config.num_labels} labels but the data "
            f"({datamodule.hparams.source!r}) has {datamodule.num_labels} ({datamodule.label_names}); "
            f"set model num_labels to "
            f"{datamodule.num_labels} or use a model fine-tuned on this label set"
        )
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

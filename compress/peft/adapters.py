"""peft adapters on a sequence classifier or a causal LM: attach, count, and store configs in checkpoints.

Example:
    >>> from peft import LoraConfig
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from compress.peft.adapters import attach_adapter
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
    >>> peft_model = attach_adapter(model, LoraConfig(r=4, target_modules=["query", "value"]))
    >>> trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    >>> [any(part in n for n in trainable) for part in ("lora_A", "lora_B", "classifier", "query.base")]
    [True, True, True, False]
"""

from __future__ import annotations

import copy
from typing import Any

from peft import PeftConfig, TaskType, get_peft_model
from torch import nn

from compress.peft.bottleneck import BottleneckConfig, add_bottleneck_adapters
from compress.stored import from_stored, to_stored

AdapterConfig = PeftConfig | BottleneckConfig


def attach_adapter(
    model: nn.Module, config: AdapterConfig | dict, task_type: TaskType = TaskType.SEQ_CLS
) -> nn.Module:
    """Adds an adapter; only adapter weights (and a classifier's head) stay trainable.

    A peft config wraps the model in a `PeftModel`; one without ``task_type`` gets the model's
    (``SEQ_CLS``, so peft keeps the classification head trainable through ``modules_to_save``, or
    ``CAUSAL_LM``); ``config`` itself is not modified. A `BottleneckConfig` inserts bottleneck adapters in
    place. A dict is a config as a checkpoint stores it (`peft_config_to_dict`, `compress.stored.to_stored`).
    """
    config = from_stored(config, AdapterConfig, "adapter")
    if isinstance(config, BottleneckConfig):
        return add_bottleneck_adapters(model, config)
    config = as_peft_config(config)
    if config.task_type is None:
        config = copy.deepcopy(config)
        config.task_type = task_type
    if config.task_type != task_type:
        kind = "causal language model" if task_type == TaskType.CAUSAL_LM else "sequence classifier"
        raise ValueError(
            f"adapter.task_type: {config.task_type!r} does not fit a {kind}; "
            f"use {task_type.value} or leave it unset"
        )
    return get_peft_model(model, config)


def as_peft_config(config: PeftConfig | dict) -> PeftConfig:
    """A `PeftConfig` from itself or from the dict `peft_config_to_dict` stored in a checkpoint."""
    config = from_stored(config, PeftConfig, "adapter")
    if isinstance(config, PeftConfig):
        return config
    raise TypeError(
        f"adapter: expected a peft.PeftConfig (e.g. peft.LoraConfig(r=8)), got {type(config).__name__}"
    )


def peft_config_to_dict(config: PeftConfig) -> dict[str, Any]:
    """The stored form (plain data, so ``torch.load(weights_only=True)``-safe) of a peft config.

    Its init arguments are peft's own serialisation (``to_dict``, which drops runtime-only settings).
    """
    stored = to_stored(config, config.to_dict())
    if stored is None:
        raise TypeError(f"cannot store {type(config).__name__}: a setting is not plain data")
    return stored

"""peft adapters on a sequence classifier: attach, count, and store configs in checkpoints.

Example:
    >>> from peft import LoraConfig
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from compress.peft.adapters import attach_adapter
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
    >>> peft_model = attach_adapter(model, LoraConfig(r=4, target_modules=["query", "value"]))
    >>> sorted({n.split(".")[-2] for n, p in peft_model.named_parameters() if p.requires_grad})[:3]
    ['classifier', 'lora_A', 'lora_B']
"""

from __future__ import annotations

import copy
import json
from enum import Enum
from typing import Any

from peft import PeftConfig, TaskType, get_peft_config, get_peft_model
from torch import nn

from compress.peft.bottleneck import BottleneckConfig, add_bottleneck_adapters

AdapterConfig = PeftConfig | BottleneckConfig


def attach_adapter(model: nn.Module, config: AdapterConfig | dict) -> nn.Module:
    """Adds an adapter; only adapter weights and the classifier head stay trainable.

    A peft config wraps the model in a `PeftModel`; one without ``task_type`` gets ``SEQ_CLS`` so peft
    keeps the classification head trainable (``modules_to_save``); ``config`` itself is not modified.
    A `BottleneckConfig` inserts bottleneck adapters in place. A dict is a config as stored in a
    checkpoint.
    """
    if isinstance(config, dict) and "placement" in config:
        config = BottleneckConfig(**config)
    if isinstance(config, BottleneckConfig):
        return add_bottleneck_adapters(model, config)
    config = as_peft_config(config)
    if config.task_type is None:
        config = copy.deepcopy(config)
        config.task_type = TaskType.SEQ_CLS
    if config.task_type != TaskType.SEQ_CLS:
        raise ValueError(
            f"adapter.task_type: {config.task_type!r} does not fit a sequence classifier; "
            "use SEQ_CLS or leave it unset"
        )
    return get_peft_model(model, config)


def as_peft_config(config: PeftConfig | dict) -> PeftConfig:
    """A `PeftConfig` from itself or from the dict `peft_config_to_dict` stored in a checkpoint."""
    if isinstance(config, PeftConfig):
        return config
    if isinstance(config, dict) and "peft_type" in config:
        return get_peft_config(dict(config))
    raise TypeError(
        f"adapter: expected a peft.PeftConfig (e.g. peft.LoraConfig(r=8)), got {type(config).__name__}"
    )


def peft_config_to_dict(config: PeftConfig) -> dict[str, Any]:
    """JSON-safe (and so ``torch.load(weights_only=True)``-safe) form of a peft config."""

    def plain(value):
        if isinstance(value, set):
            return sorted(value)
        if isinstance(value, Enum):
            return value.value
        raise TypeError(f"cannot store {type(value).__name__} of a peft config")

    return json.loads(json.dumps(config.to_dict(), default=plain))

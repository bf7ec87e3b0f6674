"""A teacher outside compress's own modules: load it, freeze it, feed it a training batch, read its logits.

Used by the `Distillation` callback, which runs a teacher beside a user's own LightningModule. Plain torch
and transformers: no Lightning here.

Example:
    >>> import torch
    >>> from torch import nn
    >>> teacher = frozen(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    >>> batch = (torch.randn(2, 2, 2), torch.tensor([0, 2]))  # (inputs, labels), as a DataLoader gives
    >>> args, kwargs = teacher_inputs(teacher, batch)
    >>> logits_of(teacher(*args, **kwargs)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from compress.assets import resolve_model_source
from compress.export.prepare import CAUSAL_LM_CLASSES
from compress.safe_load import check_model_folder, load_pretrained

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values")


def load_teacher_model(source: str, field: str) -> nn.Module:
    """A fine-tuned classifier or a causal LM from a folder or offline alias; a base model is refused
    (its classifier head would be random)."""
    try:
        path = resolve_model_source(source)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{field}: {error}") from error
    check_model_folder(path, field)
    architectures = AutoConfig.from_pretrained(path).architectures or []
    if any(a in CAUSAL_LM_CLASSES for a in architectures):
        return load_pretrained(AutoModelForCausalLM, path, field)
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return load_pretrained(AutoModelForSequenceClassification, path, field)
    raise ValueError(
        f"{field}: {source!r} is neither a fine-tuned classifier nor a causal language model (its config "
        f"lists {architectures}); fine-tune it first, or pass the teacher module itself"
    )


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with no parameter requiring grad; returned for chaining."""
    module.eval()
    module.requires_grad_(False)
    return module


def teacher_inputs(teacher: nn.Module, batch: Any) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` that ``teacher`` is called with for a training ``batch``: a dict batch gives the
    keys its ``forward`` takes (never ``labels``, so a Hugging Face model computes no loss of its own); a
    tuple/list batch its first element; anything else the batch itself."""
    if isinstance(batch, Mapping):
        return (), {k: v for k, v in batch.items() if k in accepted_keys(teacher, batch) and k != "labels"}
    if isinstance(batch, (tuple, list)):
        return (batch[0],), {}
    return (batch,), {}


def accepted_keys(model: nn.Module, batch: Mapping[str, Any]) -> set[str]:
    """The keys of ``batch`` that ``model.forward`` names (the usual inputs if it takes ``**kwargs``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(base.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return {k for k in batch if k in parameters or k in MODEL_INPUTS}
    return {k for k in batch if k in parameters}


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output: ``.logits`` of a Hugging Face output, a tensor, or a tuple's first."""
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if logits is None and isinstance(output, Tensor):
        logits = output
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"Distillation.teacher: its output is a {type(output).__name__} without logits; return a tensor, "
            "a tuple starting with the logits, or an output with `.logits`"
        )
    return logits

"""Selective tuning: choose which parameters of a model train (plain torch, any training loop).

Each function sets ``requires_grad`` on every parameter (frozen unless selected), leaves buffers alone
and returns the model, so build the optimizer afterwards from ``p.requires_grad`` parameters (compress's
modules do). The head is the parameters named ``classifier.*`` or ``score.*`` (HF classifiers).

- `train_only_layers`: layer-wise tuning, a chosen subset of transformer layers.
- `train_attention_only`: the attention projections (query/key/value/output).
- `train_bias_only`: BitFit (Ben Zaken et al., 2022), the bias terms only.
- `count_trainable`: (trainable, total) parameter counts.

Finer or stochastic choices live next to these: `compress.peft.subnetwork.SubnetworkMask` (a subset of the
entries of weight tensors) and `compress.peft.layerdrop` (LayerDrop, random layer skipping in training).

Example:
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from compress.peft.freezers import count_trainable, train_bias_only
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
    >>> trainable, total = count_trainable(train_bias_only(model))
    >>> trainable < total / 10
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

from compress.peft.student import layer_container

# a name component, so ``classifier.weight`` and peft's ``base_model.model.classifier.…`` match
HEAD_PATTERNS = (r"(^|\.)classifier\.", r"(^|\.)score\.")
EMBEDDING_PATTERNS = (r"(^|\.)embeddings\.", r"(^|\.)embed_tokens\.", r"(^|\.)(wte|wpe)\.")
ATTENTION_PATTERNS = ("attention", "attn")  # BERT/RoBERTa/DistilBERT ``…attention…``, GPT/Llama ``…attn…``


def is_head(name: str) -> bool:
    """Whether a parameter name belongs to the classifier head (``classifier.*`` or ``score.*``).

    Example:
        >>> is_head("classifier.weight"), is_head("bert.pooler.dense.weight")
        (True, False)
    """
    return matches_any(name, HEAD_PATTERNS)


def is_embedding(name: str) -> bool:
    """Whether a parameter name belongs to the input embeddings (``…embeddings.*``, ``embed_tokens``, …).

    Example:
        >>> is_embedding("bert.embeddings.LayerNorm.bias"), is_embedding("bert.pooler.dense.bias")
        (True, False)
    """
    return matches_any(name, EMBEDDING_PATTERNS)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter entries; a tied (shared) tensor counts once.

    Example:
        >>> count_trainable(nn.Linear(3, 2).requires_grad_(False))
        (0, 8)
    """
    params = list(model.parameters())  # nn.Module.parameters() already yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def train_only_layers(
    model: nn.Module, layers: list[int], include_head: bool = True, include_embeddings: bool = False
) -> nn.Module:
    """Layer-wise tuning: only the given transformer layers (and the head) train.

    Args:
        model: a transformer with ``config.num_hidden_layers`` layers in one `nn.ModuleList`.
        layers: layer indices; negative ones count from the end (``[-1]`` is the top layer).
        include_head: the classifier head trains too.
        include_embeddings: the input embeddings train too.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=4,
        ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
        >>> model = train_only_layers(model, [-1])
        >>> sorted({n.split(".")[3] for n, p in model.named_parameters() if p.requires_grad and "layer" in n})
        ['3']
    """
    container = layer_container(model)
    depth = len(model.get_submodule(container))
    if not layers:
        raise ValueError("train_only_layers.layers: [] selects nothing; give layer indices such as [-1]")
    bad = [i for i in layers if not -depth <= i < depth]
    if bad:
        raise ValueError(
            f"train_only_layers.layers: {bad} outside the model's {depth} layers "
            f"(valid: 0..{depth - 1}, or -{depth}..-1 from the end)"
        )
    prefixes = tuple(f"{container}.{i % depth}." for i in layers)
    return train_where(
        model,
        lambda name: (
            name.startswith(prefixes)
            or (include_head and is_head(name))
            or (include_embeddings and is_embedding(name))
        ),
    )


def train_attention_only(
    model: nn.Module, include_head: bool = True, patterns: Iterable[str] = ATTENTION_PATTERNS
) -> nn.Module:
    """Only the attention projections train: linear maps whose module name matches a pattern.

    In BERT these are ``attention.self.{query,key,value}`` and ``attention.output.dense`` (weights and
    biases); the attention LayerNorm is not a projection (1-D weight) and stays frozen.

    Args:
        model: any model.
        include_head: the classifier head trains too.
        patterns: regular expressions searched in module names (default matches ``attention`` and ``attn``;
            e.g. ``("self_attn",)`` for Llama-style models).

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
        >>> model = train_attention_only(model, include_head=False)
        >>> [n for n, p in model.named_parameters() if p.requires_grad][:2]
        ['bert.encoder.layer.0.attention.self.query.weight', 'bert.encoder.layer.0.attention.self.query.bias']
    """
    patterns = tuple(patterns)
    if not patterns:
        raise ValueError("train_attention_only.patterns: () matches nothing; give e.g. ('attention',)")
    selected = {
        f"{module_name}.{param_name}"
        for module_name, module in model.named_modules()
        if _is_projection(module) and matches_any(module_name, patterns)
        for param_name, _ in module.named_parameters(recurse=False)
    }
    if not selected:
        raise ValueError(
            f"train_attention_only.patterns: {patterns!r} match no linear module of {type(model).__name__}; "
            "give patterns found in its module names (see model.named_modules())"
        )
    return train_where(model, lambda name: name in selected or (include_head and is_head(name)))


def train_bias_only(model: nn.Module, include_head: bool = True) -> nn.Module:
    """BitFit (Ben Zaken et al., 2022): only the bias terms (names ending in ``bias``) train.

    This includes the LayerNorm biases, as in the paper.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
        >>> model = train_bias_only(model, include_head=False)
        >>> all(n.endswith("bias") for n, p in model.named_parameters() if p.requires_grad)
        True
    """
    return train_where(model, lambda name: name.endswith("bias") or (include_head and is_head(name)))


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether any regular expression of ``patterns`` is found in ``name``."""
    return any(re.search(pattern, name) for pattern in patterns)


def train_where(model: nn.Module, trains: Callable[[str], bool]) -> nn.Module:
    """Sets ``requires_grad`` of every parameter to ``trains(name)``; returns ``model``."""
    for name, param in model.named_parameters():
        param.requires_grad_(trains(name))
    return model


def _is_projection(module: nn.Module) -> bool:
    """A linear map (nn.Linear, or transformers' GPT-2 Conv1D): a 2-D weight, not an embedding table."""
    weight = module._parameters.get("weight")
    return weight is not None and weight.ndim == 2 and not isinstance(module, nn.Embedding)

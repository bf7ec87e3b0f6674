"""LayerDrop (Fan et al., 2019): random skipping of whole transformer layers in training.

`LayerDrop` (or `add_layerdrop` / `remove_layerdrop`) replaces each layer's ``forward`` on the instance;
`has_layerdrop` tells whether a model has it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compress.peft.student import layer_container


class LayerDrop:
    """LayerDrop (Fan et al., 2019): in training mode, each transformer layer is skipped with probability p.

    A skipped layer returns its input hidden states (the whole batch skips it). In eval mode the model
    is exactly the original one. The decision uses the global torch RNG, so ``seed_everything`` and the
    `ExactResume` callback make runs and resumes reproducible; ``p=0`` draws nothing.

    The layers are not wrapped: each layer's ``forward`` is replaced on the instance (as accelerate's
    hooks do), so parameter names, ``state_dict`` keys, ``isinstance`` checks and transformers'
    hidden-state capture (``output_hidden_states``, used by intermediate-layer distillation) are
    unchanged; a skipped layer's recorded hidden state is its input. `remove` restores the plain forward.

    Layers that return a tuple (e.g. DeBERTa-v2) skip as ``(hidden_states, None, …)`` of the same length,
    learnt from a real call: until then (the first forward in training mode) a layer is never skipped.

    Args:
        model: a transformer with ``config.num_hidden_layers`` layers in one `nn.ModuleList`.
        p: skip probability in [0, 1).

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=4,
        ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
        >>> drop = LayerDrop(model, p=0.2)
        >>> model.bert.encoder.layer[0].forward.p
        0.2
        >>> drop.remove()
    """

    def __init__(self, model: nn.Module, p: float) -> None:
        if not 0 <= p < 1:
            raise ValueError(f"LayerDrop.p: {p!r} must be in [0, 1) (typical: 0.1 to 0.2; 0 disables)")
        self.model, self.p = model, p
        for layer in _layers(model):
            current = layer.__dict__.get("forward")
            if isinstance(current, _SkippingForward):
                current.p = p  # already dropping: change the probability, never stack
            else:
                layer.forward = _SkippingForward(layer, p, inner=current)

    def remove(self) -> None:
        """Restores each layer's plain forward.

        Example:
            >>> from transformers import BertConfig, BertForSequenceClassification
            >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2,
            ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
            >>> drop = LayerDrop(model, p=0.1)
            >>> drop.remove()
            >>> has_layerdrop(model)
            False
        """
        remove_layerdrop(self.model)


def add_layerdrop(model: nn.Module, p: float) -> nn.Module:
    """Adds `LayerDrop` with probability ``p`` to ``model`` (a second call changes ``p``) and returns it.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = add_layerdrop(BertForSequenceClassification(BertConfig(hidden_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)), 0.1)
        >>> has_layerdrop(model)
        True
    """
    LayerDrop(model, p)
    return model


def remove_layerdrop(model: nn.Module) -> nn.Module:
    """Restores the plain layers' forward (a no-op without LayerDrop) and returns the model.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = add_layerdrop(BertForSequenceClassification(BertConfig(hidden_size=32,
        ...     num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)), 0.1)
        >>> has_layerdrop(remove_layerdrop(model))
        False
    """
    for layer in _layers(model):
        current = layer.__dict__.get("forward")
        if isinstance(current, _SkippingForward):
            if current.inner is None:
                del layer.forward  # back to the class's forward
            else:
                layer.forward = current.inner
    return model


def has_layerdrop(model: nn.Module) -> bool:
    """Whether any transformer layer of ``model`` has LayerDrop.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> has_layerdrop(BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2,
        ...     num_attention_heads=2, intermediate_size=64, vocab_size=100)))
        False
    """
    return any(isinstance(layer.__dict__.get("forward"), _SkippingForward) for layer in _layers(model))


class _SkippingForward:
    """A layer's forward that, in training mode, returns its input with probability ``p``.

    A callable object rather than a bound method, so the model still pickles and deep-copies.
    """

    def __init__(self, layer: nn.Module, p: float, inner: Callable[..., Any] | None = None) -> None:
        self.layer, self.p, self.inner = layer, p, inner
        self.output_len: int | None = None  # 0: a tensor, k: a k-tuple; None: not seen yet

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # p == 0 draws nothing, so adding LayerDrop(p=0) leaves the dropout RNG stream untouched
        skip = self.layer.training and self.p > 0 and torch.rand(()).item() < self.p
        if skip and self.output_len is not None:
            hidden = args[0] if args else kwargs["hidden_states"]
            return hidden if self.output_len == 0 else (hidden, *[None] * (self.output_len - 1))
        output = (
            self.inner(*args, **kwargs)
            if self.inner is not None
            else type(self.layer).forward(self.layer, *args, **kwargs)
        )
        self.output_len = len(output) if isinstance(output, tuple) else 0
        return output


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(layer_container(model))

"""Selective tuning: choose which parameters of a model train (plain torch, any training loop).

Each function sets ``requires_grad`` on every parameter (frozen unless selected), leaves buffers alone
and returns the model, so build the optimizer afterwards from ``p.requires_grad`` parameters (compress's
modules do). The head is the parameters named ``classifier.*`` or ``score.*`` (HF classifiers).

- `train_only_layers`: layer-wise tuning, a chosen subset of transformer layers.
- `train_attention_only`: the attention projections (query/key/value/output).
- `train_bias_only`: BitFit (Ben Zaken et al., 2022), the bias terms only.
- `SubnetworkMask`: a chosen or largest-magnitude subset of the entries of weight tensors.
- `add_layerdrop` / `remove_layerdrop`: LayerDrop (Fan et al., 2019), random layer skipping in training.
- `count_trainable`: (trainable, total) parameter counts.

Example:
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from compress.peft.freezing import count_trainable, train_bias_only
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
    >>> trainable, total = count_trainable(train_bias_only(model))
    >>> trainable < total / 10
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

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
    return _matches(name, HEAD_PATTERNS)


def is_embedding(name: str) -> bool:
    """Whether a parameter name belongs to the input embeddings (``…embeddings.*``, ``embed_tokens``, …).

    Example:
        >>> is_embedding("bert.embeddings.LayerNorm.bias"), is_embedding("bert.pooler.dense.bias")
        (True, False)
    """
    return _matches(name, EMBEDDING_PATTERNS)


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
    return _train_where(
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
        if _is_projection(module) and _matches(module_name, patterns)
        for param_name, _ in module.named_parameters(recurse=False)
    }
    if not selected:
        raise ValueError(
            f"train_attention_only.patterns: {patterns!r} match no linear module of {type(model).__name__}; "
            "give patterns found in its module names (see model.named_modules())"
        )
    return _train_where(model, lambda name: name in selected or (include_head and is_head(name)))


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
    return _train_where(model, lambda name: name.endswith("bias") or (include_head and is_head(name)))


class SubnetworkMask:
    """Trains a subset of the entries of some weight tensors, by zeroing the other entries' gradients.

    ``masks`` maps parameter names to boolean tensors of the parameter's shape (True = trains). `apply`
    freezes every other parameter (except the head), and registers gradient hooks on the masked ones.

    Caveats:
        - Only gradients are masked. AdamW's decoupled weight decay moves every entry the optimizer holds,
          so give the masked tensors ``weight_decay=0`` (or a masked entry decays toward 0). Plain Adam/SGD
          without decay leave masked entries bitwise unchanged.
        - Apply before the optimizer has state: momentum accumulated earlier still moves masked entries.
        - The hooks are not saved: on resume, rebuild the mask from the saved ``masks``
          (``torch.save(mask.masks, path)``), not with `from_magnitude` on the trained weights.

    Args:
        masks: parameter name → bool tensor of that parameter's shape.

    Example:
        >>> lin = nn.Linear(2, 2, bias=False)
        >>> mask = SubnetworkMask({"weight": torch.tensor([[True, False], [False, False]])})
        >>> lin = mask.apply(lin, include_head=False)
        >>> lin(torch.ones(1, 2)).sum().backward()
        >>> lin.weight.grad
        tensor([[1., 0.],
                [0., 0.]])
        >>> mask.remove()
    """

    def __init__(self, masks: dict[str, Tensor]) -> None:
        if not masks:
            raise ValueError("SubnetworkMask.masks: {} selects nothing; give {parameter name: bool tensor}")
        for name, mask in masks.items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(
                    f"SubnetworkMask.masks[{name!r}]: {kind} is not a bool tensor; "
                    "give a torch.bool tensor of the parameter's shape (True = trains)"
                )
        self.masks = dict(masks)
        self._handles: list[RemovableHandle] = []

    @classmethod
    def from_magnitude(
        cls, model: nn.Module, fraction: float, patterns: Iterable[str] | None = None
    ) -> SubnetworkMask:
        """Per targeted tensor, the ``fraction`` of entries with the largest ``|w|`` train.

        Each tensor keeps ``max(1, round(fraction · numel))`` entries.

        Args:
            model: the model whose current weights decide the subset.
            fraction: share of each tensor's entries that train, in (0, 1].
            patterns: regular expressions searched in parameter names; None targets the weights of the
                `nn.Linear` layers inside the transformer layers.

        Example:
            >>> from transformers import BertConfig, BertForSequenceClassification
            >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
            ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
            >>> mask = SubnetworkMask.from_magnitude(model, 0.25)
            >>> len(mask.masks), mask.fractions()["bert.encoder.layer.0.attention.self.query.weight"]
            (6, 0.25)
        """
        if not 0 < fraction <= 1:
            raise ValueError(
                f"SubnetworkMask.from_magnitude.fraction: {fraction!r} must be in (0, 1] "
                "(e.g. 0.05 trains the 5% largest-magnitude entries of each tensor)"
            )
        targets = _magnitude_targets(model, patterns)
        return cls({name: _top_fraction(param.detach(), fraction) for name, param in targets.items()})

    def fractions(self) -> dict[str, float]:
        """Share of trainable entries per masked tensor.

        Example:
            >>> SubnetworkMask({"w": torch.tensor([True, False])}).fractions()
            {'w': 0.5}
        """
        return {name: mask.float().mean().item() for name, mask in self.masks.items()}

    def apply(self, model: nn.Module, include_head: bool = True) -> nn.Module:
        """Freezes everything but the masked tensors (and the head) and masks their gradients.

        Example:
            >>> mask = SubnetworkMask({"weight": torch.ones(2, 2, dtype=torch.bool)})
            >>> mask.apply(nn.Linear(2, 2), include_head=False).bias.requires_grad
            False
        """
        if self._handles:
            raise RuntimeError("SubnetworkMask.apply: already applied; call remove() first")
        params = dict(model.named_parameters())
        for name, mask in self.masks.items():
            if name not in params:
                raise ValueError(
                    f"SubnetworkMask.masks: {name!r} is not a parameter of {type(model).__name__} "
                    "(names as in model.named_parameters())"
                )
            if mask.shape != params[name].shape:
                raise ValueError(
                    f"SubnetworkMask.masks[{name!r}]: shape {tuple(mask.shape)} differs from the "
                    f"parameter's {tuple(params[name].shape)}"
                )
        _train_where(model, lambda name: name in self.masks or (include_head and is_head(name)))
        for name, mask in self.masks.items():
            hook = partial(_mask_gradient, mask=mask.to(params[name].device))
            self._handles.append(params[name].register_hook(hook))
        return model

    def remove(self) -> None:
        """Removes the gradient hooks (the parameters' ``requires_grad`` stay as they are).

        Example:
            >>> SubnetworkMask({"bias": torch.ones(2, dtype=torch.bool)}).remove()
        """
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


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


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(pattern, name) for pattern in patterns)


def _is_projection(module: nn.Module) -> bool:
    """A linear map (nn.Linear, or transformers' GPT-2 Conv1D): a 2-D weight, not an embedding table."""
    weight = module._parameters.get("weight")
    return weight is not None and weight.ndim == 2 and not isinstance(module, nn.Embedding)


def _train_where(model: nn.Module, trains: Callable[[str], bool]) -> nn.Module:
    for name, param in model.named_parameters():
        param.requires_grad_(trains(name))
    return model


def _magnitude_targets(model: nn.Module, patterns: Iterable[str] | None) -> dict[str, nn.Parameter]:
    if patterns is not None:
        patterns = tuple(patterns)
        targets = {n: p for n, p in model.named_parameters() if _matches(n, patterns)}
        if not targets:
            raise ValueError(
                f"SubnetworkMask.from_magnitude.patterns: {patterns!r} match no parameter of "
                f"{type(model).__name__} (see model.named_parameters())"
            )
        return targets
    container = layer_container(model)
    return {
        f"{container}.{module_name}.weight": module.weight
        for module_name, module in model.get_submodule(container).named_modules()
        if isinstance(module, nn.Linear)
    }


def _top_fraction(weight: Tensor, fraction: float) -> Tensor:
    keep = max(1, round(fraction * weight.numel()))
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[weight.abs().flatten().topk(keep).indices] = True
    return mask.view_as(weight)


def _mask_gradient(grad: Tensor, mask: Tensor) -> Tensor:
    return grad * mask

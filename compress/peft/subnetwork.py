"""`SubnetworkMask`: train a chosen or largest-magnitude subset of the entries of weight tensors.

Like the freezers of `compress.peft.freezers` it sets ``requires_grad`` (everything else but the head is
frozen); within the masked tensors, gradient hooks zero the entries that must not move.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from compress.peft.freezers import is_head, matches_any, train_where
from compress.peft.student import layer_container


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
        train_where(model, lambda name: name in self.masks or (include_head and is_head(name)))
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


def _magnitude_targets(model: nn.Module, patterns: Iterable[str] | None) -> dict[str, nn.Parameter]:
    if patterns is not None:
        patterns = tuple(patterns)
        targets = {n: p for n, p in model.named_parameters() if matches_any(n, patterns)}
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

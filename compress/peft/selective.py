"""`SelectiveTuning`: one setting that picks which student weights train, for YAML and Python alike.

Example:
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from compress.peft.selective import SelectiveTuning
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
    >>> model = SelectiveTuning(method="bias").apply(model)  # BitFit
    >>> trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    >>> all(n.endswith("bias") or n.startswith("classifier") for n in trainable)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from compress.peft.freezers import train_attention_only, train_bias_only, train_only_layers
from compress.peft.layerdrop import add_layerdrop
from compress.peft.subnetwork import SubnetworkMask


@dataclass
class SelectiveTuning:
    """Which weights train (after any adapter is attached), plus optional LayerDrop.

    Args:
        method: ``all`` (no freezing), ``layers`` (layer-wise tuning of ``layers``), ``attention`` (only the
            attention projections), ``bias`` (BitFit) or ``subnetwork`` (the ``subnetwork_fraction`` of
            largest-magnitude entries of each Linear weight in the layers, via gradient masks; use
            ``weight_decay: 0`` so decay does not move the other entries).
        layers: transformer layer indices for ``layers`` (negative counts from the end).
        subnetwork_fraction: share of each weight tensor that trains for ``subnetwork``, in (0, 1].
        include_embeddings: also train the embeddings (``layers`` only).
        layerdrop: probability of skipping each layer in training (Fan et al. 2019), 0 to turn off.
    """

    method: Literal["all", "layers", "attention", "bias", "subnetwork"] = "all"
    layers: list[int] | None = None
    subnetwork_fraction: float = 0.1
    include_embeddings: bool = False
    layerdrop: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in ("all", "layers", "attention", "bias", "subnetwork"):
            raise ValueError(
                f"SelectiveTuning.method: {self.method!r} must be all, layers, attention, bias or subnetwork"
            )
        if self.method == "layers" and not self.layers:
            raise ValueError("SelectiveTuning.layers: method 'layers' needs the layer indices, e.g. [-2, -1]")
        if not 0 < self.subnetwork_fraction <= 1:
            raise ValueError(
                f"SelectiveTuning.subnetwork_fraction: {self.subnetwork_fraction!r} must be in (0, 1]"
            )
        if not 0 <= self.layerdrop < 1:
            raise ValueError(f"SelectiveTuning.layerdrop: {self.layerdrop!r} must be in [0, 1)")

    def apply(self, model: nn.Module) -> nn.Module:
        """Sets ``requires_grad`` (and gradient masks / LayerDrop) on ``model`` in place."""
        if self.method == "layers":
            train_only_layers(model, self.layers, include_embeddings=self.include_embeddings)
        elif self.method == "attention":
            train_attention_only(model)
        elif self.method == "bias":
            train_bias_only(model)
        elif self.method == "subnetwork":
            # selected from the weights at construction, so a resumed run rebuilds the same mask
            self.mask = SubnetworkMask.from_magnitude(model, self.subnetwork_fraction)
            self.mask.apply(model)
        if self.layerdrop > 0:
            add_layerdrop(model, self.layerdrop)
        return model

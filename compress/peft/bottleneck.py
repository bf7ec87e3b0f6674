"""Bottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2020), which peft does not provide.

An adapter maps a sub-layer output ``h`` to ``h + up(act(down(h)))``: a down-projection to
``hidden / reduction_factor`` units, a non-linearity and an up-projection back to ``hidden``. The
up-projection starts at zero, so a model with fresh adapters computes exactly what the base model did.
``houlsby`` places one adapter after the attention output and one after the feed-forward output of every
layer; ``pfeiffer`` only the latter. Only the adapters (and the classifier head) are trained.

The adapter sits on the output projection of the sub-layer (e.g. BERT's ``attention.output.dense`` and
``output.dense``), so it acts before the sub-layer's residual connection and LayerNorm, as in the papers.
Unlike LoRA, an adapter is non-linear and cannot be merged into the base weights: it adds two small
matrix products per adapter to every forward pass (inference latency).

Example:
    >>> import torch
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from compress.peft.bottleneck import BottleneckConfig, add_bottleneck_adapters, bottleneck_adapters
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100)).eval()
    >>> ids = torch.tensor([[1, 5, 7, 2]])
    >>> before = model(input_ids=ids).logits
    >>> model = add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=4, placement="houlsby"))
    >>> torch.equal(before, model(input_ids=ids).logits)  # zero-initialised up-projection
    True
    >>> len(bottleneck_adapters(model))  # 2 layers x (attention + feed-forward)
    4
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PLACEMENTS = ("houlsby", "pfeiffer")
NON_LINEARITIES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
# Parameter-name prefixes of sequence-classification heads: BERT/RoBERTa `classifier`, decoder LMs
# `score`, and DistilBERT's `pre_classifier`, which is also freshly initialised for a new task.
HEAD_PREFIXES = ("classifier.", "score.", "pre_classifier.")


@dataclass
class BottleneckConfig:
    """Where bottleneck adapters go and how big they are.

    Args:
        reduction_factor: bottleneck width is ``hidden_size // reduction_factor`` (16: 48 units in BERT-base).
        placement: ``houlsby`` (after attention and feed-forward outputs) or ``pfeiffer`` (feed-forward only).
        non_linearity: ``relu``, ``gelu``, ``swish``/``silu`` or ``tanh``.
        attention_output_pattern: regex (``re.fullmatch`` on module names) of the attention output
            Linear layers; used by ``houlsby`` only. Default fits BERT-style encoders.
        ffn_output_pattern: regex of the feed-forward output Linear layers. Default fits BERT-style encoders.
        train_head: keep the classifier head trainable (it is freshly initialised for a new task).

    Example:
        >>> BottleneckConfig(reduction_factor=8, placement="houlsby").placement
        'houlsby'
    """

    reduction_factor: int = 16
    placement: Literal["houlsby", "pfeiffer"] = "pfeiffer"
    non_linearity: str = "relu"
    attention_output_pattern: str = r".*\.attention\.output\.dense"
    ffn_output_pattern: str = r".*\.layer\.\d+\.output\.dense"
    train_head: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.reduction_factor, bool) or not isinstance(self.reduction_factor, int):
            raise ValueError(
                f"BottleneckConfig.reduction_factor: {self.reduction_factor!r} must be an int >= 1, e.g. 16"
            )
        if self.reduction_factor < 1:
            raise ValueError(f"BottleneckConfig.reduction_factor: {self.reduction_factor!r} must be >= 1")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"BottleneckConfig.placement: {self.placement!r} must be 'houlsby' or 'pfeiffer'"
            )
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(
                f"BottleneckConfig.non_linearity: {self.non_linearity!r} must be one of "
                f"{', '.join(NON_LINEARITIES)}"
            )
        for field in ("attention_output_pattern", "ffn_output_pattern"):
            try:
                re.compile(getattr(self, field))
            except (re.error, TypeError) as error:
                raise ValueError(f"BottleneckConfig.{field}: not a valid regex ({error})") from error

    def patterns(self) -> dict[str, str]:
        """The config fields whose patterns locate adapter positions for this placement."""
        fields = ["ffn_output_pattern"]
        if self.placement == "houlsby":
            fields.insert(0, "attention_output_pattern")
        return {field: getattr(self, field) for field in fields}


class BottleneckAdapter(nn.Module):
    """``x ↦ up(act(down(x)))``; the residual is added by `AdapterWrappedLinear`.

    Example:
        >>> adapter = BottleneckAdapter(32, 8)
        >>> adapter(torch.ones(2, 32)).abs().sum().item()  # zero-initialised up-projection
        0.0
    """

    def __init__(self, hidden_size: int, bottleneck_size: int, non_linearity: str = "relu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = NON_LINEARITIES[non_linearity]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        # Zero output at insertion: the model starts exactly as the base model (near-identity init).
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class AdapterWrappedLinear(nn.Linear):
    """A Linear whose output ``y`` becomes ``y + adapter(y)``.

    It shares the base layer's ``weight`` and ``bias`` Parameters and subclasses `nn.Linear`, so the base
    state-dict keys (``...dense.weight``) are unchanged and the adapter's keys are ``...dense.adapter.*``.

    Example:
        >>> layer = AdapterWrappedLinear(nn.Linear(4, 4), BottleneckAdapter(4, 2))
        >>> sorted(layer.state_dict())[:3]
        ['adapter.down.bias', 'adapter.down.weight', 'adapter.up.bias']
    """

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate new weights
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y + self.adapter(y)

    def unwrap(self) -> nn.Linear:
        """A plain Linear with the same (shared) weight and bias, without the adapter."""
        base = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        base.weight = self.weight
        base.bias = self.bias
        return base


def bottleneck_adapters(model: nn.Module) -> dict[str, BottleneckAdapter]:
    """The adapters of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BottleneckAdapter)}


def add_bottleneck_adapters(model: nn.Module, config: BottleneckConfig) -> nn.Module:
    """Inserts adapters in place, freezes everything else except (with ``train_head``) the head.

    Returns ``model`` with ``model.bottleneck_config`` set, for `save_bottleneck_adapters`.
    """
    if not isinstance(config, BottleneckConfig):
        raise TypeError(
            f"bottleneck config: expected a BottleneckConfig (e.g. BottleneckConfig(reduction_factor=16)), "
            f"got {type(config).__name__}"
        )
    if bottleneck_adapters(model) or getattr(model, "bottleneck_config", None) is not None:
        raise ValueError(
            "add_bottleneck_adapters: the model already has bottleneck adapters; "
            "call remove_bottleneck_adapters first or use a fresh model"
        )
    targets = _target_linears(model, config)
    narrowest = min(linear.out_features for linear in targets.values())
    if narrowest < config.reduction_factor:  # checked before any change, so an error leaves the model as is
        raise ValueError(
            f"BottleneckConfig.reduction_factor: {config.reduction_factor} leaves no bottleneck units for "
            f"width {narrowest}; use a reduction_factor <= {narrowest}"
        )
    model.requires_grad_(False)
    for name, linear in targets.items():
        bottleneck = linear.out_features // config.reduction_factor
        adapter = BottleneckAdapter(linear.out_features, bottleneck, config.non_linearity)
        adapter.to(device=linear.weight.device, dtype=linear.weight.dtype)
        _set_submodule(model, name, AdapterWrappedLinear(linear, adapter))
    if config.train_head:
        for name, param in model.named_parameters():
            if name.startswith(HEAD_PREFIXES):
                param.requires_grad_(True)
    model.bottleneck_config = config
    return model


def _target_linears(model: nn.Module, config: BottleneckConfig) -> dict[str, nn.Linear]:
    """The Linear layers matched by the placement's patterns, each at most once."""
    targets: dict[str, nn.Linear] = {}
    modules = dict(model.named_modules())
    for field, pattern in config.patterns().items():
        matches = {name: m for name, m in modules.items() if re.fullmatch(pattern, name)}
        if not matches:
            raise ValueError(
                f"no module matches BottleneckConfig.{field} {pattern!r} in {type(model).__name__}; "
                f"set the pattern for this architecture (e.g. {_example_names(modules)})"
            )
        not_linear = [name for name, m in matches.items() if type(m) is not nn.Linear]
        if not_linear:
            raise ValueError(
                f"BottleneckConfig.{field} {pattern!r} matches non-Linear modules {not_linear[:3]}; "
                "narrow the pattern to the output projection Linear layers"
            )
        targets.update(matches)
    return targets


def _example_names(modules: dict[str, nn.Module]) -> str:
    linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
    return ", ".join(linears[:6]) or "the model has no Linear layers"


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def remove_bottleneck_adapters(model: nn.Module) -> nn.Module:
    """Removes the adapters in place; base parameters stay frozen (``model.requires_grad_(True)`` thaws)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, AdapterWrappedLinear):
            _set_submodule(model, name, module.unwrap())
    model.bottleneck_config = None
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights `save_bottleneck_adapters` stores: adapters, plus the head when ``train_head``."""
    config = _config_of(model)
    prefixes = tuple(f"{name}." for name in bottleneck_adapters(model))
    if config.train_head:
        prefixes += HEAD_PREFIXES
    return {name: t for name, t in model.state_dict().items() if name.startswith(prefixes)}


def _config_of(model: nn.Module) -> BottleneckConfig:
    config = getattr(model, "bottleneck_config", None)
    if config is None:
        raise ValueError("the model has no bottleneck adapters; call add_bottleneck_adapters(model, config)")
    return config


def save_bottleneck_adapters(model: nn.Module, folder: str | Path, overwrite: bool = False) -> Path:
    """Writes ``bottleneck_config.json`` and ``adapter_model.safetensors`` (adapter and head weights only).

    With ``train_head=False`` the head is not stored: load into a base model that has the same head.
    Refuses a non-empty ``folder`` unless ``overwrite``; returns the folder.
    """
    folder = Path(folder)
    config = _config_of(model)
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ValueError(f"save_bottleneck_adapters: {folder} is not empty; pass overwrite=True to replace")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    # clone: safetensors refuses tensors that share storage or are non-contiguous views
    state = {name: t.detach().cpu().contiguous().clone() for name, t in adapter_state_dict(model).items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


def load_bottleneck_config(folder: str | Path) -> BottleneckConfig:
    """The config `save_bottleneck_adapters` wrote to ``folder``."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"load_bottleneck_adapters: {path} not found; save with save_bottleneck_adapters")
    data = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(BottleneckConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(
            f"{path}: unknown BottleneckConfig fields {unknown}; expected some of {sorted(fields)}"
        )
    return BottleneckConfig(**data)


def load_bottleneck_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """Adds the saved adapters to a fresh base ``model`` (in place) and loads their weights (strictly).

    Raises ValueError when the saved keys or shapes do not fit; the model then holds fresh adapters.
    """
    config = load_bottleneck_config(folder)
    add_bottleneck_adapters(model, config)
    saved = load_file(str(Path(folder) / WEIGHTS_FILE))
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"load_bottleneck_adapters: {folder} does not fit this model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; load into the base model the adapters were trained on"
        )
    wrong_shape = [name for name, t in saved.items() if t.shape != expected[name].shape]
    if wrong_shape:
        raise ValueError(
            f"load_bottleneck_adapters: shapes in {folder} differ from this model for {wrong_shape[:5]}; "
            "load into the base model the adapters were trained on"
        )
    model.load_state_dict(saved, strict=False)
    return model

"""Which module structured pruning acts on, and what to say when nothing in it fits.

The BERT-style and Llama-family layouts prune a Hugging Face model; the generic layout
(`compress.sparsity.structured.channels`) prunes any network of Conv/Linear layers torch-pruning can trace.
Which layers count follows `select_targets`: never a teacher, adapters or the output layers.

Example:
    >>> from torch import nn
    >>> holder = nn.Module()
    >>> holder.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> pruning_root(holder) is holder.net
    True
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn
from transformers import PreTrainedModel

from compress.sparsity.roles import submodule
from compress.sparsity.targets import select_targets

LAYER_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)  # what torch-pruning's groups are rooted at
LOOKED_FOR = "a BERT-style encoder, a Llama-family decoder or Conv/Linear layers torch-pruning can trace"
NEITHER_LAYOUT = (
    "is neither a BERT-style encoder (layers with attention.self.query/key/value and intermediate.dense) nor "
    "a Llama-family decoder (model.model.layers with self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj)"
)


def hugging_face_models(
    module: nn.Module, targets: dict[str, nn.Module] | None = None
) -> dict[str, PreTrainedModel]:
    """The outermost Hugging Face models inside ``module`` that hold prunable layers (so never a teacher);
    ``targets``: `select_targets(module)` when the caller has it already."""
    targets = select_targets(module) if targets is None else targets
    found: dict[str, PreTrainedModel] = {}
    for name, child in module.named_modules():
        outermost = not any(name.startswith(f"{outer}.") for outer in found)
        if (
            isinstance(child, PreTrainedModel)
            and outermost
            and any(t.startswith(f"{name}.") for t in targets)
        ):
            found[name] = child
    return found


def pruning_root(module: nn.Module, attribute: str | None = None) -> nn.Module:
    """The module to prune: ``module.<attribute>`` if given (``""``: ``module`` itself), else the single
    Hugging Face model in ``module`` that is not a teacher, else the single direct child holding prunable
    layers, else ``module`` itself (a LightningModule whose own layers make the network)."""
    if attribute is not None:
        return _named_root(module, attribute)
    if isinstance(module, PreTrainedModel):
        return module
    targets = select_targets(module)  # once: it traces a network that is not a Hugging Face model
    models = hugging_face_models(module, targets)
    if len(models) > 1:
        raise ValueError(
            f"module: expected one Hugging Face model (not a teacher) in {type(module).__name__}, found "
            f"{sorted(models)}; pass module='<attribute holding the model to prune>'"
        )
    if models:
        return next(iter(models.values()))
    holders = [n for n, _ in module.named_children() if any(t.startswith(f"{n}.") or t == n for t in targets)]
    if len(holders) == 1:
        return module.get_submodule(holders[0])
    if holders:
        return module
    name = type(module).__name__
    raise ValueError(f"module: looked for {LOOKED_FOR} in {name}; found {found_layers(module)}")


def found_layers(module: nn.Module) -> str:
    """What ``module`` holds, for a message saying why none of it can be pruned."""
    layers = [name for name, m in module.named_modules() if isinstance(m, LAYER_TYPES)]
    if not layers:
        children = [f"{n} ({type(c).__name__})" for n, c in module.named_children()]
        return f"no Conv/Linear layer (its children: {', '.join(children) or 'none'})"
    if layers == [""]:
        return f"a single {type(module).__name__} layer, which is the output layer of whatever it is part of"
    shown = ", ".join(layers[:6]) + (f", ... (+{len(layers) - 6} more)" if len(layers) > 6 else "")
    return (
        f"{len(layers)} Conv/Linear layers ({shown}), none of them prunable: teachers (frozen networks), "
        "adapters and the output layers are never pruned"
    )


def _named_root(module: nn.Module, attribute: str) -> nn.Module:
    chosen = submodule(module, attribute)
    if isinstance(chosen, PreTrainedModel):
        return chosen
    targets = select_targets(chosen)
    models = hugging_face_models(chosen, targets)
    if len(models) > 1:
        raise ValueError(
            f"module: {attribute!r} ({type(chosen).__name__}) holds several Hugging Face models with layers "
            f"to prune, {sorted(models)}; name one of them, e.g. module='{attribute}.{sorted(models)[0]}'"
        )
    if models:
        return next(iter(models.values()))
    if targets:
        return chosen
    raise ValueError(
        f"module: {attribute!r} is a {type(chosen).__name__} with nothing to prune: looked for {LOOKED_FOR} "
        f"in it; found {found_layers(chosen)}. Name the attribute holding the network to prune"
    )

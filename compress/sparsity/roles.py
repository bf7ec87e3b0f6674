"""What each part of a module is, by structure: the teacher, the output layers, the trained network.

Sparsity callbacks act on a user's own LightningModule, whose attribute names are theirs. These rules
look at what a submodule *is*, never at what it is called:

- **teacher**: a module given to `register_teacher` (the `Distillation` callback and compress's modules
  register theirs), any Hugging Face model whose parameters are all frozen and that is not part of a
  trained one, and any direct child of the root (or of a plain `ModuleList`/`ModuleDict` there) whose
  parameters are all frozen: a frozen network kept beside the one being trained. In a root frozen as a
  whole, only registered teachers count. Eval mode is not a sign: ``from_pretrained`` returns eval-mode
  models, students included. Frozen parts *inside* a trained network (a LoRA base layer, layers waiting for
  `GradualUnfreezing`) are not teachers.
- **output layers**: for a Hugging Face model, every layer outside its ``base_model`` (the classifier,
  ``score``, ``lm_head``...) and ``get_output_embeddings()``; for any other network, the Linear/Conv
  layers whose results reach the output of ``forward`` without passing through another Linear/Conv, found
  by tracing it with ``torch.fx``; when tracing fails, the network's last Linear/Conv layer.
- **trained network**: the single Hugging Face model that is not a teacher, else the single non-teacher
  child holding Linear/Conv layers, else the root itself.

Example:
    >>> from torch import nn
    >>> class Classifier(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.body, self.out = nn.Linear(4, 8), nn.Linear(8, 3)
    ...         self.big_model = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 3)).requires_grad_(False)
    ...     def forward(self, x):
    ...         return self.out(self.body(x).relu())
    >>> model = Classifier()
    >>> sorted(teacher_names(model)), sorted(output_layer_names(model))
    (['big_model'], ['out'])
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch.fx
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_REGISTERED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def register_teacher(module: nn.Module) -> nn.Module:
    """Marks ``module`` as a teacher (no sparsity method selects it); returns it. Nothing is stored on it."""
    _REGISTERED.add(module)
    return module


def is_frozen(module: nn.Module) -> bool:
    """Whether ``module`` has parameters and none of them requires grad."""
    flags = [p.requires_grad for p in module.parameters()]
    return bool(flags) and not any(flags)


def teacher_names(root: nn.Module) -> list[str]:
    """Dotted names of the outermost teachers in ``root`` (see the module docstring). Inside a ``root``
    that is frozen as a whole, being frozen tells nothing: only registered teachers count."""
    found = [name for name, child in root.named_modules() if name and child in _REGISTERED]
    if not is_frozen(root):
        found += [name for name in _frozen_hf_models(root) if not inside(name, found)]
        found += [n for n, child in _beside_trained(root) if is_frozen(child) and not inside(n, found)]
    return [name for name in found if not any(name.startswith(f"{outer}.") for outer in found)]


def _frozen_hf_models(root: nn.Module) -> list[str]:
    """Frozen Hugging Face models not nested in a trained one (a frozen ``bert`` of a classifier whose head
    trains is part of that classifier, not a teacher)."""
    trained = [n for n, m in root.named_modules() if isinstance(m, PreTrainedModel) and not is_frozen(m)]
    return [
        name
        for name, child in root.named_modules()
        if name
        and isinstance(child, PreTrainedModel)
        and is_frozen(child)
        and not any(name.startswith(f"{outer}.") or not outer for outer in trained)
    ]


def _beside_trained(root: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Direct children of ``root``, looking through plain containers; none for a Hugging Face model."""
    if isinstance(root, PreTrainedModel):
        return
    for name, child in root.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)) and not is_frozen(child):
            yield from _beside_trained(child, f"{full}.")
        else:
            yield full, child


def inside(name: str, prefixes: list[str]) -> bool:
    """Whether the dotted ``name`` is one of ``prefixes`` or lies inside one of them."""
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def output_layer_names(root: nn.Module) -> set[str]:
    """Dotted names of the layers that produce a network's output, for every network in ``root``."""
    teachers = teacher_names(root)
    models = _outermost_hf_models(root, teachers)
    names = {f"{prefix}{n}" for prefix, model in models.items() for n in _hf_head(model)}
    if not models:
        names |= _traced_outputs(root, teachers)
    return names


def _outermost_hf_models(root: nn.Module, teachers: list[str]) -> dict[str, PreTrainedModel]:
    """``{"<name>.": model}`` for each outermost Hugging Face model outside the teachers (``""``: root)."""
    found: dict[str, PreTrainedModel] = {}
    for name, child in root.named_modules():
        nested = inside(name, teachers) or any(name.startswith(p) for p in found)
        if isinstance(child, PreTrainedModel) and not nested:
            found[f"{name}." if name else ""] = child
    return found


def _hf_head(model: PreTrainedModel) -> set[str]:
    base = next(n for n, m in model.named_modules() if m is model.base_model)
    output = model.get_output_embeddings()
    return {
        n
        for n, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES) and ((base and not inside(n, [base])) or m is output)
    }


def _traced_outputs(root: nn.Module, teachers: list[str]) -> set[str]:
    """The output layers of ``root``'s forward by tracing; per non-teacher child when the root fails."""
    traced = _layers_feeding_output(root)
    if traced is not None:
        return {n for n in traced if not inside(n, teachers)}
    names: set[str] = set()
    for name, child in root.named_children():
        if inside(name, teachers) or not any(isinstance(m, PRUNABLE_TYPES) for m in child.modules()):
            continue
        found = _layers_feeding_output(child)
        if found is None:
            last = [n for n, m in child.named_modules() if isinstance(m, PRUNABLE_TYPES)][-1:]
            found = set(last)
        names |= {f"{name}.{n}" for n in found}
    return names


def _layers_feeding_output(network: nn.Module) -> set[str] | None:
    """Linear/Conv layers whose results reach ``network``'s output directly; None if it cannot be traced."""
    try:
        graph = torch.fx.symbolic_trace(network).graph
    except Exception:  # noqa: BLE001 - any failure to trace means: use the fallback
        return None
    modules = dict(network.named_modules())
    found: set[str] = set()
    pending = [n for node in graph.nodes if node.op == "output" for n in node.all_input_nodes]
    seen: set[torch.fx.Node] = set()
    while pending:
        node = pending.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules.get(node.target), PRUNABLE_TYPES):
            found.add(str(node.target))
        else:
            pending.extend(node.all_input_nodes)
    return found


def trained_model(root: nn.Module, module: str | None = None, owner: str = "module") -> nn.Module:
    """The network a callback acts on: ``root.<module>`` if given, else the single Hugging Face model that
    is not a teacher, else the single non-teacher child holding Linear/Conv layers, else ``root``.

    Example:
        >>> from torch import nn
        >>> holder = nn.Module()
        >>> holder.net, holder.frozen = nn.Linear(2, 2), nn.Linear(2, 2).requires_grad_(False)
        >>> trained_model(holder) is holder.net
        True
    """
    if module is not None:
        return submodule(root, module, owner)
    teachers = teacher_names(root)
    models = _outermost_hf_models(root, teachers)
    if len(models) == 1:
        return _outermost_wrapper(root, next(iter(models)).rstrip("."))
    holders = [
        child
        for name, child in root.named_children()
        if not inside(name, teachers) and any(isinstance(m, PRUNABLE_TYPES) for m in child.modules())
    ]
    return holders[0] if len(holders) == 1 and not models else root


def submodule(root: nn.Module, name: str, owner: str = "module") -> nn.Module:
    """``root.get_submodule(name)``; a missing one is refused naming the setting ``owner`` and the
    children there are."""
    try:
        return root.get_submodule(name)
    except AttributeError as error:
        children = [n for n, _ in root.named_children()]
        raise ValueError(
            f"{owner}: {type(root).__name__} has no submodule {name!r}; its children are {children}"
        ) from error


def _outermost_wrapper(root: nn.Module, name: str) -> nn.Module:
    """The model called ``name`` in ``root``, or the outermost peft model wrapping it."""
    parts = name.split(".") if name else []
    for depth in range(len(parts)):
        candidate = root.get_submodule(".".join(parts[:depth]))
        if isinstance(candidate, PeftModel):
            return candidate
    return root.get_submodule(name)

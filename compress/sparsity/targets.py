"""Which weights a sparsity method acts on: one rule shared by L1, magnitude, KeepSparsity and structured
pruning, decided by what each part of the module is (`compress.sparsity.roles`), not what it is called.

Default: the ``weight`` of every `nn.Linear` / `nn.Conv1d/2d/3d` in the module being trained, except

- the teacher: registered (`Distillation`, compress's modules), a frozen Hugging Face model, or a frozen
  network beside the trained one, under any attribute name;
- the output layers: a Hugging Face model's layers outside its ``base_model`` and its output embeddings,
  or, for any other network, the layers that produce its output (found by tracing ``forward``);
- adapter and LoRA parameters (peft's ``lora_*``, ``adapter``, prefix/prompt encoders); a peft wrapper
  layer is not an `nn.Linear`, so its ``base_layer`` is what gets pruned.

Embeddings, norms and biases are never selected (they are not Linear/Conv weights). Explicit control:
``targets`` (regular expressions, `re.search` against the module's dotted name) selects exactly the
matching layers, output layers and adapters included, but a target inside the teacher is refused;
``exclude`` drops matching layers from either rule; ``where(name, module) -> bool`` replaces the type check.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    >>> sorted(select_targets(net))  # '4' produces the output
    ['0', '3']
    >>> sorted(select_targets(net, exclude=[r"^3$"])), sorted(select_targets(net, targets=[r"^4$"]))
    (['0'], ['4'])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn

from compress.sparsity.roles import PRUNABLE_TYPES, inside, output_layer_names, teacher_names

ADAPTER_PATTERNS: tuple[str, ...] = (
    r"(^|\.)lora_",
    r"adapter",
    r"(^|\.)(prompt_encoder|prefix_encoder)(\.|$)",
)

Where = Callable[[str, nn.Module], bool]


def select_targets(
    module: nn.Module,
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    where: Where | None = None,
    owner: str = "targets",
) -> dict[str, nn.Module]:
    """Modules (by dotted name) whose ``weight`` a sparsity method may change.

    Args:
        module: the module being trained (a LightningModule or any `nn.Module`).
        targets: if given, exactly the layers whose names match one of these patterns.
        exclude: layers whose names match one of these patterns are dropped.
        where: extra predicate on ``(name, module)``; replaces the type check when given.
        owner: the setting named in errors (``MagnitudePruning.targets``...).
    """
    teachers = teacher_names(module)
    layers = {
        name: child
        for name, child in module.named_modules()
        if name
        and getattr(child, "weight", None) is not None
        and (where(name, child) if where is not None else isinstance(child, PRUNABLE_TYPES))
    }
    if targets is not None:
        chosen = _explicit(layers, targets, teachers, owner)
    else:
        skipped = output_layer_names(module) if layers else set()
        adapters = [re.compile(p) for p in ADAPTER_PATTERNS]
        chosen = {
            name: child
            for name, child in layers.items()
            if not inside(name, teachers)
            and name not in skipped
            and not any(p.search(name) for p in adapters)
        }
    dropped = [re.compile(p) for p in exclude or ()]
    return {name: child for name, child in chosen.items() if not any(p.search(name) for p in dropped)}


def _explicit(
    layers: dict[str, nn.Module], targets: Sequence[str], teachers: list[str], owner: str
) -> dict[str, nn.Module]:
    if isinstance(targets, str):
        raise TypeError(f"{owner}: {targets!r} must be a list of patterns, e.g. [{targets!r}]")
    patterns = [re.compile(p) for p in targets]
    chosen = {name: child for name, child in layers.items() if any(p.search(name) for p in patterns)}
    in_teacher = [name for name in chosen if inside(name, teachers)]
    if in_teacher:
        raise ValueError(
            f"{owner}: {list(targets)} selects {in_teacher[0]!r}, inside "
            f"{_owner_of(in_teacher[0], teachers)!r}, whose parameters are all frozen (a teacher, which "
            "sparsity never changes); anchor the pattern on the trained model (e.g. '^student\\.') or "
            "unfreeze that module if it is trained"
        )
    return chosen


def _owner_of(name: str, teachers: list[str]) -> str:
    return next(t for t in teachers if inside(name, [t]))


def describe_targets(targets: dict[str, nn.Module]) -> str:
    """One log line: how many modules and weights are targeted, and a few of their names."""
    total = sum(m.weight.numel() for m in targets.values())
    names = list(targets)
    shown = ", ".join(names[:4]) + (f", ... (+{len(names) - 4} more)" if len(names) > 4 else "")
    return f"{len(targets)} modules, {total:,} weights: {shown}"


def resolve_targets(
    module: nn.Module,
    targets: Sequence[str] | None,
    exclude: Sequence[str] | None,
    where: Where | None,
    owner: str,
) -> dict[str, nn.Module]:
    """`select_targets` for the callback ``owner``, which must select something (else a clear error)."""
    found = select_targets(module, targets, exclude, where, f"{owner}.targets")
    if found:
        return found
    teachers, outputs = teacher_names(module), sorted(output_layer_names(module))
    layers = [n for n, m in module.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    seen = f"found {len(layers)} Linear/Conv layers; teacher: {teachers or 'none'}; output layers: {outputs}"
    if targets is not None:
        raise ValueError(f"{owner}.targets: {list(targets)} matches no Linear/Conv layer ({seen})")
    raise ValueError(
        f"{owner}: no weights to act on: looked for nn.Linear/nn.Conv weights outside the teacher, adapters "
        f"and output layers, {seen}; pass `targets=[...]` patterns or `where=` to choose them"
    )

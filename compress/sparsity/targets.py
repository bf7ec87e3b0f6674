"""Which weights a sparsity method acts on: one rule shared by L1, magnitude and structured pruning.

Default: the ``weight`` of every `nn.Linear` / `nn.Conv1d/2d/3d` in the module being trained, except

- a teacher (any module path with a ``teacher``/``teachers`` component),
- adapter and LoRA parameters (``lora_*``, ``adapter``, prefix/prompt encoders); a peft wrapper layer is
  not an `nn.Linear`, so its ``base_layer`` is what gets pruned,
- the classification head (``classifier``, ``score``, ``pre_classifier``, ``lm_head``, ``qa_outputs``,
  ``head``, including peft's ``modules_to_save`` copies of it).

Embeddings, norms and biases are never selected (they are not Linear/Conv weights). Override with
``include`` / ``exclude`` regular expressions (matched with `re.search` against the module's dotted name)
or a ``where(name, module) -> bool`` callable.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4))
    >>> sorted(select_targets(net))
    ['0', '3']
    >>> sorted(select_targets(net, exclude=[r"^3$"]))
    ['0']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn

DEFAULT_EXCLUDE: tuple[str, ...] = (
    r"(^|\.)teachers?(\.|$)",
    r"(^|\.)lora_",
    r"adapter",
    r"(^|\.)(prompt_encoder|prefix_encoder)(\.|$)",
    r"(^|\.)(classifier|score|pre_classifier|lm_head|qa_outputs|head)(\.|$)",
)
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

Where = Callable[[str, nn.Module], bool]


def select_targets(
    module: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = DEFAULT_EXCLUDE,
    where: Where | None = None,
) -> dict[str, nn.Module]:
    """Modules (by dotted name) whose ``weight`` a sparsity method may change.

    Args:
        module: the module being trained (a LightningModule or any `nn.Module`).
        include: if given, only names matching one of these patterns are kept.
        exclude: names matching one of these patterns are dropped; `None` drops nothing.
        where: extra predicate on ``(name, module)``; replaces the type check when given.
    """
    keep_include = [re.compile(p) for p in include or ()]
    keep_exclude = [re.compile(p) for p in exclude or ()]
    chosen: dict[str, nn.Module] = {}
    for name, child in module.named_modules():
        if not name or getattr(child, "weight", None) is None:
            continue
        if where is None and not isinstance(child, PRUNABLE_TYPES):
            continue
        if where is not None and not where(name, child):
            continue
        if keep_include and not any(p.search(name) for p in keep_include):
            continue
        if any(p.search(name) for p in keep_exclude):
            continue
        chosen[name] = child
    return chosen


def describe_targets(targets: dict[str, nn.Module]) -> str:
    """One log line: how many modules and weights are targeted, and a few of their names."""
    total = sum(m.weight.numel() for m in targets.values())
    names = list(targets)
    shown = ", ".join(names[:4]) + (f", ... (+{len(names) - 4} more)" if len(names) > 4 else "")
    return f"{len(targets)} modules, {total:,} weights: {shown}"


def check_targets(targets: dict[str, nn.Module], owner: str) -> None:
    """Raise a clear error when a rule selects nothing, before any training step."""
    if not targets:
        raise ValueError(
            f"{owner}: no weights to act on. The target rule selects nn.Linear/nn.Conv weights outside the "
            "teacher, adapters and classifier head; pass `include=[...]` patterns or `where=` to choose them."
        )

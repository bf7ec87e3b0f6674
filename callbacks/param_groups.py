"""Optimizer param groups a callback adds mid-run, with the schedulers' per-group state grown to match.

Torch schedulers keep one entry per param group (``base_lrs``, LambdaLR's ``lr_lambdas``...) and zip them
with the optimizer's groups strictly: a group added after the scheduler was built stops it with an error
or leaves the group unscheduled. `grow_schedulers` extends each list with copies of group 0's entry (lrs
times ``lr_factor``), so the new groups follow the same warm-up and decay.

Example:
    >>> import torch
    >>> from lightning.pytorch import Trainer
    >>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    >>> scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    >>> optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})
    >>> grow_scheduler(scheduler, len(optimizer.param_groups), lr_factor=1.0)
    >>> len(scheduler.base_lrs), len(scheduler.lr_lambdas)
    (2, 2)
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.optim import Optimizer

# a scheduler's per-param-group lists: the lrs among them are scaled for a new group, the rest copied
SCHEDULER_LISTS = {
    "base_lrs": True,
    "_last_lr": True,
    "min_lrs": True,
    "max_lrs": True,
    "lr_lambdas": False,
    "base_momentums": False,
    "max_momentums": False,
}


def grow_schedulers(trainer: pl.Trainer, optimizer: Optimizer, lr_factor: float) -> None:
    """Extends the per-group state of the optimizer's schedulers to its current number of groups."""
    for config in trainer.lr_scheduler_configs:
        if config.scheduler.optimizer is optimizer:
            grow_scheduler(config.scheduler, len(optimizer.param_groups), lr_factor)


def grow_scheduler(scheduler: Any, groups: int, lr_factor: float) -> None:
    """Extends ``scheduler``'s per-group lists (and those of the schedulers it chains) to ``groups``."""
    for child in getattr(scheduler, "_schedulers", ()):  # SequentialLR, ChainedScheduler
        grow_scheduler(child, groups, lr_factor)
    for name, is_lr in SCHEDULER_LISTS.items():
        values = getattr(scheduler, name, None)
        if isinstance(values, list) and 0 < len(values) < groups:
            extra = values[0] * lr_factor if is_lr else values[0]
            values.extend([extra] * (groups - len(values)))

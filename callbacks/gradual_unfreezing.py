"""`GradualUnfreezing`: ULMFiT-style top-down unfreezing of the transformer layers, with exact resume.

Example:
    >>> from lightning.pytorch import Trainer
    >>> from compress.callbacks.gradual_unfreezing import GradualUnfreezing
    >>> trainer = Trainer(max_epochs=4, callbacks=[GradualUnfreezing(epochs_per_layer=1)])
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer

from compress.peft.freezers import count_trainable, is_embedding
from compress.peft.student import layer_container
from compress.sparsity.roles import trained_model

from .exact_resume import warn_unless_exact_resume
from .param_groups import grow_schedulers

EMBEDDINGS = "embeddings"  # the label of the embeddings' stage
GROUP_KEY = "unfrozen"  # marks the param groups this callback adds (kept in the optimizer's state dict)


class GradualUnfreezing(BaseFinetuning):
    """Freezes the transformer layers at fit start, then unfreezes one more, top layer first, per stage.

    Everything outside the layers (pooler, classifier head) trains from the start. Stage 1 begins at
    ``start_epoch`` and unfreezes the last layer; every ``epochs_per_layer`` epochs the next lower layer
    follows; with ``freeze_embeddings`` the embeddings come last (ULMFiT, Howard & Ruder 2018). Only
    parameters that were trainable before the callback froze them are unfrozen, so with a peft adapter the
    adapter's layers unfreeze, never the base weights.

    Each unfrozen layer joins the (first) optimizer as new param groups: its weights with the
    hyperparameters of group 0 (e.g. its weight decay, not the optimizer's constructor defaults), its
    biases and norms (1-D) without weight decay as compress's optimizers do; every lr of the group
    (``lr``, and ``initial_lr``/``max_lr``/``min_lr`` that schedulers keep there) is group 0's times
    ``lr_factor``. The optimizer's LR schedulers learn about the new groups too (their per-group lists, e.g.
    ``base_lrs`` and LambdaLR's ``lr_lambdas``, grow with group 0's entry, lrs times ``lr_factor``), so the
    unfrozen layers follow the same warm-up/decay: a scheduler built for fewer groups would otherwise stop
    with an error (torch 2.13 zips groups and lrs strictly) or leave the new groups unscheduled.

    Resume (``fit(ckpt_path=...)``): ``configure_optimizers`` runs again on the freshly frozen model and
    builds only the initial groups. As in Lightning's `BaseFinetuning`, the checkpoint keeps every group
    with its parameters' names, and ``on_fit_start`` rebuilds the same groups, in the same order, and
    grows the schedulers to match, before Lightning loads the optimizer and scheduler states. The names of
    the unfrozen stages are kept too, so their parameters require grad again.

    The model is ``pl_module.<module>``, by default the trained Hugging Face model whatever its attribute
    name (`compress.sparsity.roles.trained_model`: the one that is not a frozen teacher).

    Args:
        epochs_per_layer: epochs between two unfreezing steps (>= 1).
        start_epoch: epoch of the first step (the last layer); before it only the head trains.
        lr_factor: lr of the unfrozen layers relative to group 0 (> 0).
        freeze_embeddings: keep the embeddings frozen until after the first layer (the last step);
            False trains them from the start.
        module: attribute of the LightningModule holding the model (default: found by structure).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> unfreezing = GradualUnfreezing(epochs_per_layer=2, lr_factor=0.5)
        >>> trainer = Trainer(max_epochs=8, callbacks=[unfreezing])
    """

    def __init__(
        self,
        epochs_per_layer: int = 1,
        start_epoch: int = 0,
        lr_factor: float = 1.0,
        freeze_embeddings: bool = True,
        module: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(epochs_per_layer, int) or epochs_per_layer < 1:
            raise ValueError(
                f"GradualUnfreezing.epochs_per_layer: {epochs_per_layer!r} must be an integer >= 1 "
                "(epochs between two layers)"
            )
        if not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(
                f"GradualUnfreezing.start_epoch: {start_epoch!r} must be an integer >= 0 "
                "(0 unfreezes the last layer in the first epoch)"
            )
        if not lr_factor > 0:
            raise ValueError(f"GradualUnfreezing.lr_factor: {lr_factor!r} must be > 0 (1.0: the head's lr)")
        self.epochs_per_layer = epochs_per_layer
        self.start_epoch = start_epoch
        self.lr_factor = lr_factor
        self.freeze_embeddings = freeze_embeddings
        self.module = module
        self._stages: dict[str, list[str]] = {}  # label → parameter names (of the model), in unfreezing order
        self._unfrozen: list[str] = []  # labels of the stages unfrozen so far

    def stage_at(self, epoch: int) -> int:
        """How many stages are unfrozen during ``epoch``.

        Example:
            >>> GradualUnfreezing(epochs_per_layer=2, start_epoch=1).stage_at(4)
            2
        """
        if epoch < self.start_epoch:
            return 0
        return 1 + (epoch - self.start_epoch) // self.epochs_per_layer

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "unfrozen": list(self._unfrozen)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._unfrozen = list(state_dict.get("unfrozen", []))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # validate/test/predict keep the model as it is
        # a new fit starts from scratch; on resume, load_state_dict (called after setup) restores both
        self._internal_optimizer_metadata = {}
        self._unfrozen = []
        warn_unless_exact_resume(trainer, "GradualUnfreezing")
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        model = self._model(pl_module)
        self._stages = _stages(model, self.freeze_embeddings)
        params = dict(model.named_parameters())
        for names in self._stages.values():
            for name in names:
                params[name].requires_grad_(False)
        _log_trainable(model, "layers frozen")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # on resume: the saved param groups, before their state
        unknown = [label for label in self._unfrozen if label not in self._stages]
        if unknown:
            raise ValueError(
                f"GradualUnfreezing: the checkpoint unfroze {unknown}, which this model does not have "
                f"(its stages: {list(self._stages)}); resume with the model the checkpoint was trained with"
            )
        for optimizer in trainer.optimizers:
            grow_schedulers(trainer, optimizer, self.lr_factor)
        if self._unfrozen:
            model = self._model(pl_module)
            params = dict(model.named_parameters())
            for label in self._unfrozen:
                for name in self._stages[label]:
                    params[name].requires_grad_(True)
            _log_trainable(model, f"resumed with {len(self._unfrozen)} stage(s) unfrozen")

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        target = min(self.stage_at(epoch), len(self._stages))
        if len(self._unfrozen) >= target:
            return  # also the case for a second optimizer: the first one received the groups
        model = self._model(pl_module)
        params = dict(model.named_parameters())
        for label in list(self._stages)[len(self._unfrozen) : target]:
            unfrozen = [params[name].requires_grad_(True) for name in self._stages[label]]
            self._add_groups(pl_module.trainer, optimizer, label, unfrozen)
            self._unfrozen.append(label)
            _log_trainable(model, f"epoch {epoch}: {label} unfrozen")

    def _add_groups(
        self, trainer: pl.Trainer, optimizer: Optimizer, label: str, params: list[nn.Parameter]
    ) -> None:
        # group 0's hyperparameters, not the optimizer's constructor defaults (AdamW's default decay is
        # 0.01 whatever the module asked for); "lr", "initial_lr", "max_lr"... scaled
        base = {
            k: v * self.lr_factor if k.endswith("lr") else v
            for k, v in optimizer.param_groups[0].items()
            if k not in ("params", "param_names")
        }
        base[GROUP_KEY] = label
        matrices, vectors = [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]
        if matrices:
            optimizer.add_param_group({**base, "params": matrices})
        if vectors:
            no_decay = {"weight_decay": 0.0} if "weight_decay" in base else {}
            optimizer.add_param_group({**base, **no_decay, "params": vectors})
        grow_schedulers(trainer, optimizer, self.lr_factor)

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        return trained_model(pl_module, self.module, "GradualUnfreezing.module")


def _stages(model: nn.Module, freeze_embeddings: bool) -> dict[str, list[str]]:
    """Stage label → names of the trainable parameters it holds: the layers top-down, then the embeddings."""
    container = layer_container(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    depth = len(model.get_submodule(container))
    stages = {}
    for i in reversed(range(depth)):
        prefix = f"{container}.{i}."
        stages[f"{container}.{i}"] = [n for n in trainable if n.startswith(prefix)]
    if freeze_embeddings:
        stages[EMBEDDINGS] = [n for n in trainable if is_embedding(n) and not n.startswith(f"{container}.")]
    return stages


def _log_trainable(model: nn.Module, event: str) -> None:
    trainable, total = count_trainable(model)
    rank_zero_info(f"GradualUnfreezing: {event}; {trainable:,} of {total:,} parameters train")

"""L1 / group-lasso sparse training as a Lightning callback, with a warm-up schedule for the strength."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from compress.sparsity import l1
from compress.sparsity.groups import channel_groups
from compress.sparsity.roles import trained_model
from compress.sparsity.targets import Where, describe_targets, resolve_targets

from .exact_resume import warn_unless_exact_resume

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


class L1Sparsity(Callback):
    """Push target weights (or whole channels) towards zero with ``λ_t·Σ|w|`` (or ``λ_t·Σ_g||w_g||₂``).

    Args:
        strength: λ, the penalty weight once warm-up is over.
        warmup_steps: λ grows linearly from 0 over this many optimizer steps (0: constant).
        mode: ``"subgradient"`` adds ``λ·∂penalty`` to the gradients before each optimizer step (as if the
            term were in the loss; before gradient clipping); ``"proximal"`` soft-thresholds the weights
            after each step with threshold ``lr·λ``, giving exact zeros.
        groups: penalise whole channels (group lasso over torch-pruning's dependency groups: attention and
            FFN channels of a transformer, conv filters) instead of single weights.
        module: attribute of the LightningModule holding the network to trace for ``groups`` (default: the
            trained network, `compress.sparsity.roles.trained_model`). The first training batch
            (its ``input_ids``/``attention_mask``/... keys, or its first element) is the example input.
        near_zero: weights with ``|w|`` at most this count as zero in the logged ``l1/near_zero`` fraction.
        targets, exclude, where: which weights (`compress.sparsity.targets`); frozen ones are skipped.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[L1Sparsity(strength=1e-4, warmup_steps=100, mode="proximal")])
    """

    def __init__(
        self,
        strength: float = 1e-5,
        warmup_steps: int = 0,
        mode: Literal["subgradient", "proximal"] = "subgradient",
        groups: bool = False,
        module: str | None = None,
        near_zero: float = 1e-3,
        targets: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        where: Where | None = None,
    ) -> None:
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}.")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        if mode not in ("subgradient", "proximal"):
            raise ValueError(f"mode must be 'subgradient' or 'proximal', got {mode!r}.")
        self.strength, self.warmup_steps, self.mode = strength, warmup_steps, mode
        self.use_groups, self.module, self.near_zero = groups, module, near_zero
        self.targets_given, self.exclude, self.where = targets, exclude, where
        self.targets: dict[str, nn.Module] = {}
        self.groups: list[l1.ChannelGroup] | None = None
        self.last_step = -1
        self.lrs: dict[int, float] = {}
        self.dead: set[str] = set()  # layers already warned about

    def strength_at(self, step: int) -> float:
        """λ after ``step`` optimizer steps."""
        if self.warmup_steps == 0:
            return self.strength
        return self.strength * min(1.0, step / self.warmup_steps)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.targets = resolve_targets(pl_module, self.targets_given, self.exclude, self.where, "L1Sparsity")
        warn_unless_exact_resume(trainer, "L1Sparsity")
        rank_zero_info(f"L1Sparsity targets {describe_targets(self.targets)}")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._weights():
            raise ValueError(
                "L1Sparsity: every target weight is frozen (requires_grad=False), e.g. the base of a LoRA "
                "model; an L1 penalty cannot change them. Train the base, or use MagnitudePruning instead."
            )

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, *args: Any
    ) -> None:
        if self.use_groups and self.groups is None:
            self.groups = self._find_groups(pl_module, batch)

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        # The proximal threshold uses the learning rate of this step, before a scheduler changes it.
        self.lrs.update({id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]})
        if self.mode != "subgradient":
            return
        strength = self.strength_at(trainer.global_step)
        if self.groups is not None:
            l1.add_group_lasso_subgradient(self.groups, strength)
        else:
            l1.add_l1_subgradient(self._weights(), strength)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self.last_step:
            return  # gradient accumulation: no optimizer step happened on this batch
        self.last_step = step
        if self.mode == "proximal":
            self._shrink(self.strength_at(step - 1))
        if step % trainer.log_every_n_steps == 0:
            self._log(pl_module, self.strength_at(step))

    def _weights(self) -> list[nn.Parameter]:
        return [m.weight for m in self.targets.values() if m.weight.requires_grad]

    def _shrink(self, strength: float) -> None:
        if self.groups is not None:
            for group in self.groups:
                l1.group_soft_threshold_(group, self.lrs.get(id(group[0][0]), 0.0) * strength)
            return
        for weight in self._weights():
            l1.soft_threshold_(weight.data, self.lrs.get(id(weight), 0.0) * strength)

    def _log(self, pl_module: LightningModule, strength: float) -> None:
        weights = [m.weight for m in self.targets.values()]
        penalty = l1.group_lasso_penalty(self.groups) if self.groups is not None else l1.l1_penalty(weights)
        pl_module.log("l1/penalty", strength * float(penalty))
        pl_module.log("l1/near_zero", l1.near_zero_fraction(weights, self.near_zero))
        self._warn_dead_layers(strength)

    def _warn_dead_layers(self, strength: float) -> None:
        """A layer whose every weight the penalty drove to (near) zero passes no signal: say so, once."""
        for name, module in self.targets.items():
            if name not in self.dead and l1.near_zero_fraction([module.weight], self.near_zero) == 1.0:
                self.dead.add(name)
                rank_zero_warn(
                    f"L1Sparsity: every weight of {name!r} is now within {self.near_zero} of zero (strength "
                    f"{strength:g}, mode {self.mode!r}): the layer passes no signal and the model's accuracy "
                    "collapses; lower `strength`, lengthen `warmup_steps`, or exclude the layer"
                )

    def _find_groups(self, pl_module: LightningModule, batch: Any) -> list[l1.ChannelGroup]:
        network = self._network(pl_module)
        if isinstance(batch, Mapping):
            inputs: Any = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        else:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        groups = channel_groups(network, inputs, self.targets)
        if not groups:
            raise ValueError(
                "L1Sparsity(groups=True): torch-pruning found no channel group made only of target weights; "
                "widen `targets` or use groups=False."
            )
        rank_zero_info(f"L1Sparsity: group lasso over {len(groups)} channel groups")
        return groups

    def _network(self, pl_module: LightningModule) -> nn.Module:
        return trained_model(pl_module, self.module, "L1Sparsity.module")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = state_dict["last_step"]

"""`StructuredPruning`: remove attention heads and FFN channels, or any network's channels, during training,
with exact resume.

It prunes BERT-style encoders, Llama-family causal LMs and, through torch-pruning, any other network of
Conv/Linear layers (`compress.sparsity.layouts`).

Example:
    >>> from lightning.pytorch import Trainer
    >>> from compress.callbacks.structured_pruning import StructuredPruning
    >>> pruning = StructuredPruning(head_ratio=0.5, ffn_ratio=0.5, at_step=100)
    >>> trainer = Trainer(max_steps=300, callbacks=[pruning])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from compress.sparsity.layouts import (
    HEAD_UNITS,
    IMPORTANCE_CHOICES,
    HeadUnit,
    ImportanceChoice,
    StructuredPruner,
    check_settings,
    restore_pruning_history,
    structured_pruner,
)
from compress.sparsity.structured import check_ratio
from compress.sparsity.structured.root import pruning_root

from .checkpoint_reading import read_checkpoints_through, stop_reading_through

STATE_PREFIX = "StructuredPruning"


class StructuredPruning(Callback):
    """Physically removes ``head_ratio`` of the attention heads and ``ffn_ratio`` of the FFN channels, or
    ``channel_ratio`` of the channels of any other network.

    Three layouts (`compress.sparsity.layouts`): BERT-style encoders, pruned through torch-pruning
    (`compress.sparsity.structured`), Llama-family causal LMs (Llama, SmolLM2, Mistral, Qwen2/3;
    `compress.sparsity.llm`), and the generic layout for any other network torch-pruning can trace (a CNN,
    an MLP, a Hugging Face model of another family; `compress.sparsity.structured.channels`): output
    channels of its Conv layers and hidden units of its Linear layers go, with the inputs of the layers
    that consume them, lowest group L2 magnitude first; the output layers never shrink. torch-pruning traces
    the network on the batch about to be trained (the ``x`` of an ``(x, y)`` batch, or the tensors of a dict
    batch that its ``forward`` takes by name), once on the first batch to check the setting, then each
    round. In a decoder, ``head_ratio`` counts key/value groups (``head_unit="groups"``:
    a group goes with its query heads) or query heads within every group (``head_unit="heads"``: the
    key/value heads stay), every layer keeps the same widths, the config follows (``save_pretrained`` gives
    a stock folder), and the units go by ``activation`` importance (Minitron: mean activations on the batch
    about to be trained, without gradients, in eval mode). LoRA on a decoder is refused: prune first
    (`compress.sparsity.prune_llm`, or this callback without an adapter), then attach LoRA.

    Pruning happens at the start of the training batch once ``at_step`` optimizer steps are done, or in
    rounds at ``steps`` (a list, or ``num_steps`` evenly spaced from ``start_step`` to ``end_step``). Ratios
    are cumulative shares of the model before any structured pruning: round k of n removes what is missing
    to reach k/n of them, so the targets are met at the last round. What the model may lose follows
    `compress.sparsity.structured`: never the teacher, adapters or head; the hidden size stays; LoRA is
    merged, then restarts from zero (encoders and the generic layout). ``taylor`` importance uses, for an
    encoder, the gradient of the model's own loss on the batch about to be trained (dict batches with
    ``labels``); for the generic layout, the gradients of the training loss itself: the round runs in
    ``on_before_optimizer_step`` of the step it is due at (after that step's backward, before its update),
    which then updates the pruned parameters with what is left of their gradients. Under LoRA the base
    weights have no gradients, so ``taylor`` with LoRA is refused in the generic layout.

    After a round the optimizers keep their param groups and LR schedulers (the schedule continues at its
    step), with the new, smaller parameters in place of the old; their optimizer state (Adam moments)
    restarts. Rebuilding through ``configure_optimizers`` would restart the schedule and every moment, and
    drop groups that other callbacks added.

    Resume (``fit(ckpt_path=...)``): the state holds the model's history of removals. Lightning loads the
    LightningModule's weights before any callback state (``_restore_modules_and_callbacks``: restore_model,
    then restore_callbacks), and ``trainer.ckpt_path`` is only set once it reads the file (after ``setup``).
    So ``setup`` puts a `CheckpointIO` in front of the strategy's own for the run: every checkpoint Lightning
    reads passes through it, and the history is replayed on the fresh model (`restore_history`) before the
    module's ``on_load_checkpoint`` and its weights see the file; ``teardown`` takes it out again.
    ``validate``/``test`` with ``ckpt_path`` work the same way. For ``load_from_checkpoint`` use
    `load_pruned_checkpoint`. DDP is refused: its gradient buckets cannot follow parameters that change shape
    mid-run.

    Args:
        head_ratio: fraction of the attention heads removed, in [0, 1) (encoders and decoders).
        ffn_ratio: fraction of the intermediate (FFN) channels removed, in [0, 1) (encoders and decoders).
        channel_ratio: fraction of the output channels of every prunable Conv layer and of the hidden units
            of every prunable Linear layer removed, in [0, 1) (rounded down per layer; the generic layout
            only). Prunable: `select_targets` (never a teacher, adapters or an output layer) and whose
            channels do not reach the network's output.
        importance: ``magnitude`` (default) or ``taylor`` (encoders and the generic layout), ``activation``
            (decoders: their only and default choice).
        head_unit: ``groups`` (default): whole key/value groups, i.e. an encoder's heads; ``heads``: query
            heads within every group of a decoder (refused for an encoder, whose groups have one head).
        at_step: prune once, after this many optimizer steps (default 0: before training).
        steps: prune in rounds, after these numbers of optimizer steps.
        start_step: first round of an evenly spaced schedule (with ``end_step`` and ``num_steps``).
        end_step: last round of the evenly spaced schedule.
        num_steps: number of rounds of the evenly spaced schedule.
        uniform_per_layer: every layer keeps as many heads/channels as the others; otherwise the least
            important units are removed wherever they are (encoders only: a stock decoder config has one
            width for all layers).
        module: attribute path of the LightningModule holding the model to prune (``""``: the LightningModule
            itself). Default: the single Hugging Face model in it that is not a teacher, else its single
            child holding prunable layers, else the LightningModule itself.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> pruning = StructuredPruning(head_ratio=0.5, ffn_ratio=0.5, start_step=100, end_step=400,
        ...     num_steps=4)
        >>> trainer = Trainer(max_steps=1000, callbacks=[pruning])
        >>> cnn_pruning = StructuredPruning(channel_ratio=0.5, steps=[100, 200], module="net")
    """

    def __init__(
        self,
        head_ratio: float = 0.0,
        ffn_ratio: float = 0.0,
        importance: ImportanceChoice | None = None,
        at_step: int | None = None,
        steps: Sequence[int] | None = None,
        start_step: int | None = None,
        end_step: int | None = None,
        num_steps: int | None = None,
        uniform_per_layer: bool = True,
        module: str | None = None,
        head_unit: HeadUnit = "groups",
        channel_ratio: float = 0.0,
    ) -> None:
        check_ratio("StructuredPruning.head_ratio", head_ratio)
        check_ratio("StructuredPruning.ffn_ratio", ffn_ratio)
        check_ratio("StructuredPruning.channel_ratio", channel_ratio)
        if importance not in (None, *IMPORTANCE_CHOICES):
            raise ValueError(
                f"StructuredPruning.importance: {importance!r} must be one of {IMPORTANCE_CHOICES}"
            )
        if head_unit not in HEAD_UNITS:
            raise ValueError(f"StructuredPruning.head_unit: {head_unit!r} must be one of {HEAD_UNITS}")
        self.head_ratio, self.ffn_ratio, self.importance = head_ratio, ffn_ratio, importance
        self.channel_ratio = channel_ratio
        self.head_unit = head_unit
        self.steps = _schedule(at_step, steps, start_step, end_step, num_steps)
        self.uniform_per_layer = uniform_per_layer
        self.module = module
        self.history: list[dict] = []  # the model's removals so far, in order (compress.sparsity.layouts)
        self.rounds_done = 0
        self._pruner: StructuredPruner | None = None  # the layout's, chosen in setup
        self._original: Any = None  # its structure before any pruning: what the ratios refer to
        self._inputs_checked = False  # the layout has seen a batch (the generic one traces it)
        self._batch: Any = None  # ranks_by_gradients: this step's batch, traced once its gradients exist

    @property
    @override
    def state_key(self) -> str:
        generic = {"channel_ratio": self.channel_ratio} if self.channel_ratio else {}  # older keys stay
        return self._generate_state_key(
            head_ratio=self.head_ratio, ffn_ratio=self.ffn_ratio, steps=self.steps, **generic
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history], "rounds_done": self.rounds_done}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict["history"]]
        self.rounds_done = state_dict["rounds_done"]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._start(trainer, pl_module)
        self._restore_on_read(trainer, pl_module)  # also for validate/test/predict(ckpt_path=...)

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Checks before any training step; a resumed run then gets history and rounds from the checkpoint."""
        if trainer.world_size > 1:
            raise ValueError(
                "StructuredPruning: DDP cannot follow parameters that change shape mid-run; prune in a "
                "single-process run, then train the pruned model with DDP"
            )
        model = self._model(pl_module)
        with _named_settings():
            self._pruner = structured_pruner(model, self.importance, self.head_unit, self.uniform_per_layer)
            check_settings(self._pruner, model, self._settings())
            shares = [(k + 1) / len(self.steps) for k in range(len(self.steps))]
            self._pruner.check(model, *self._ratios(), shares)
        self._original = self._pruner.original(model)
        if not self._pruner.removes_something(model, *self._ratios(), self._original):
            settings = self._pruner.settings
            given = " and ".join(f"{setting}={self._settings()[setting]}" for setting in settings)
            verb = "remove" if len(settings) > 1 else "removes"
            raise ValueError(
                f"StructuredPruning: {given} {verb} nothing from {self._pruner.describe(self._original)} "
                f"({type(model).__name__}, a {self._pruner.layout}; counts are rounded down, earlier "
                f"removals count); {self._pruner.nothing_hint(*self._ratios(), self._original)}"
            )
        self.history, self.rounds_done, self._inputs_checked = self._pruner.applied(model), 0, False

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        stop_reading_through(trainer, self)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._inputs_checked and self.rounds_done < len(self.steps):
            with _named_settings():  # before the first step: a batch the generic layout cannot use fails now
                self._pruner.check_inputs(self._model(pl_module), *self._ratios(), batch, self._original)
            self._inputs_checked = True
        if self._pruner.ranks_by_gradients:
            self._batch = batch  # traced in on_before_optimizer_step, once the step's gradients exist
            return
        self._prune_due_rounds(trainer, pl_module, batch)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        """``taylor`` in the generic layout: a round due at this step runs here, on the gradients of the
        training loss (accumulated, unscaled under mixed precision), before the optimizer uses them; the
        pruned parameters keep their gradients' remaining rows, so this step still updates them."""
        if self._batch is not None:  # set only when the layout ranks by gradients
            self._prune_due_rounds(trainer, pl_module, self._batch)
            self._batch = None

    def _prune_due_rounds(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        while self.rounds_done < len(self.steps) and trainer.global_step >= self.steps[self.rounds_done]:
            self._prune_round(trainer, pl_module, batch)

    def _prune_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        self.rounds_done += 1
        share = self.rounds_done / len(self.steps)  # cumulative: the last round reaches the targets
        model = self._model(pl_module)
        before = dict(model.named_parameters())
        with _named_settings():
            pruned = self._pruner.prune(model, *self._ratios(share), batch, self._original)
        if pruned:
            self.history = self._pruner.applied(model)
            _swap_parameters(trainer.optimizers, before, dict(model.named_parameters()))
        rank_zero_info(
            f"StructuredPruning: step {trainer.global_step}, round {self.rounds_done}/{len(self.steps)}: "
            f"{self._pruner.describe(self._pruner.structure(model))}; "
            f"{sum(p.numel() for p in model.parameters()):,} parameters"
        )

    def _restore_on_read(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Checkpoints the trainer reads from now on rebuild the shapes of ``pl_module`` as they arrive."""

        def restore(checkpoint: dict[str, Any]) -> None:
            state = checkpoint.get("callbacks", {}).get(self.state_key)
            if state is not None:
                restore_pruning_history(self._model(pl_module), state["history"])

        read_checkpoints_through(trainer, self, restore)  # never stacked twice

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        try:
            return pruning_root(pl_module, self.module)
        except ValueError as error:
            raise ValueError(f"StructuredPruning.{error}") from error

    def _settings(self) -> dict[str, float]:
        ratios = (self.head_ratio, self.ffn_ratio, self.channel_ratio)
        return dict(zip(("head_ratio", "ffn_ratio", "channel_ratio"), ratios, strict=True))

    def _ratios(self, share: float = 1.0) -> list[float]:
        """The ratios of the layout's settings, in its order, scaled to a round's cumulative ``share``."""
        return [self._settings()[setting] * share for setting in self._pruner.settings]


def load_pruned_checkpoint(
    module_class: type[pl.LightningModule],
    checkpoint_path: str,
    module: str | None = None,
    weights_only: bool = True,
    **kwargs: Any,
) -> pl.LightningModule:
    """``module_class.load_from_checkpoint(checkpoint_path, **kwargs)`` for a run `StructuredPruning` pruned.

    The plain call builds the unpruned model and fails with size mismatches. This builds ``module_class``
    from the checkpoint's hyper-parameters (``kwargs`` on top), replays the pruning history stored in the
    checkpoint's callback state, then loads the weights. The file is read with ``weights_only=True``
    (tensors and plain data, as our checkpoints hold); ``weights_only=False`` unpickles anything, for a
    trusted file only.

    Example:
        >>> from compress.modules import TaskModule
        >>> model = load_pruned_checkpoint(TaskModule, "runs/pruned/last.ckpt", model="runs/pruned/student")
        >>> model.model.config.intermediate_size
        32
    """
    map_location = kwargs.pop("map_location", "cpu")
    checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=weights_only)
    saved = checkpoint.get(module_class.CHECKPOINT_HYPER_PARAMS_KEY, {})
    hparams = {k: v for k, v in saved.items() if not k.startswith("_")}  # not LightningCLI's own keys
    loaded = module_class(**{**hparams, **kwargs})
    restore_pruning_history(pruning_root(loaded, module), checkpoint_history(checkpoint))
    loaded.on_load_checkpoint(checkpoint)
    loaded.load_state_dict(checkpoint["state_dict"])
    return loaded


def checkpoint_history(checkpoint: Mapping[str, Any]) -> list[dict]:
    """The removals recorded by the (single) `StructuredPruning` callback of a Lightning checkpoint."""
    states = [s for k, s in checkpoint.get("callbacks", {}).items() if k.startswith(STATE_PREFIX)]
    if len(states) != 1:
        raise ValueError(
            f"checkpoint: expected the state of one StructuredPruning callback, found {len(states)}; "
            "without it the pruned shapes cannot be rebuilt"
        )
    return states[0]["history"]


def _schedule(
    at_step: int | None,
    steps: Sequence[int] | None,
    start_step: int | None,
    end_step: int | None,
    num_steps: int | None,
) -> list[int]:
    """The optimizer steps after which a round runs, from exactly one way of giving them."""
    spaced = (start_step, end_step, num_steps)
    given = [at_step is not None, steps is not None, any(s is not None for s in spaced)]
    if sum(given) > 1:
        raise ValueError(
            "StructuredPruning: give at_step, steps, or start_step/end_step/num_steps, not several"
        )
    if given[2]:
        if any(s is None for s in spaced) or num_steps < 1 or not 0 <= start_step <= end_step:
            raise ValueError(
                f"StructuredPruning.start_step/end_step/num_steps: {spaced} must all be set, with "
                "0 <= start_step <= end_step and num_steps >= 1"
            )
        if num_steps == 1:
            steps = [end_step]
        else:
            steps = [
                round(start_step + i * (end_step - start_step) / (num_steps - 1)) for i in range(num_steps)
            ]
    elif not given[1]:
        steps = [at_step if at_step is not None else 0]
    steps = list(steps)
    if not steps or any(not isinstance(s, int) or s < 0 for s in steps) or steps != sorted(set(steps)):
        raise ValueError(
            f"StructuredPruning.steps: {steps} must be distinct, increasing optimizer steps >= 0 "
            "(for start_step/end_step/num_steps: fewer rounds or a longer span)"
        )
    return steps


@contextlib.contextmanager
def _named_settings() -> Iterator[None]:
    """The layouts' errors name a setting (``head_unit: ...``); this names the callback too."""
    try:
        yield
    except (TypeError, ValueError) as error:
        raise type(error)(f"StructuredPruning.{error}") from error


def _swap_parameters(
    optimizers: Sequence[Optimizer], before: dict[str, nn.Parameter], after: dict[str, nn.Parameter]
) -> None:
    """Pruning made new Parameters: they take the old ones' places in the optimizers; their state restarts."""
    replaced = {
        id(old): after[name] for name, old in before.items() if name in after and after[name] is not old
    }
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for old in group["params"]:
                if id(old) in replaced:
                    optimizer.state.pop(old, None)  # moments of the old shape
            group["params"] = [replaced.get(id(p), p) for p in group["params"]]

"""What `TaskModule` and `DistillationModule` share besides training: evaluation and prediction on the
logits of ``module(batch)``, and the callbacks every run of theirs gets.

Example:
    >>> from compress.modules.evaluation import ClassifierEvaluation
    >>> evaluation = ClassifierEvaluation(num_labels=3)
    >>> sorted(evaluation.val_metrics.keys()), [type(c).__name__ for c in evaluation.callbacks()]
    (['val/acc', 'val/f1'], ['ExactResume', 'StopOnNonFiniteLoss'])
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule
from torch import Tensor, nn
from torchmetrics import Metric

from compress.callbacks import ExactResume, StopOnNonFiniteLoss
from compress.modules.metrics import classification_metrics, log_evaluation


class Evaluation(nn.Module):
    """What every evaluation of a module shares: metric resets, prediction by argmax, the callbacks.

    A module holds one (an `nn.Module`, so the metrics follow the module to its device) and forwards its
    ``validation_step``, ``test_step``, ``predict_step`` and ``configure_callbacks`` to it.
    """

    def reset(self) -> None:
        """Fresh metric states, at fit start: states left by a ``trainer.validate`` (inference tensors) cannot
        be updated in place by fit's validation, which Lightning runs without inference mode."""
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()

    @staticmethod
    def predict_step(module: LightningModule, batch: dict[str, Tensor]) -> Tensor:
        """The most likely class of each row (of a causal LM: the most likely next token at each position)."""
        return module(batch).argmax(-1)

    @staticmethod
    def callbacks() -> list[Callback]:
        """Exact resume and the stop on a non-finite loss, added to every fit of the module."""
        return [ExactResume(), StopOnNonFiniteLoss()]


class ClassifierEvaluation(Evaluation):
    """The validation and test metrics of a classifier module, and the bodies of its evaluation hooks.

    Args:
        num_labels: the classifier's label count.
    """

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.val_metrics = classification_metrics(num_labels, "val/")
        self.test_metrics = classification_metrics(num_labels, "test/")

    def validation_step(self, module: LightningModule, batch: dict[str, Tensor]) -> None:
        """Logs ``val/loss`` (hard-label CE), ``val/acc`` and ``val/f1``."""
        log_evaluation(module, module(batch), batch["labels"], self.val_metrics, "val/loss")

    def test_step(self, module: LightningModule, batch: dict[str, Tensor]) -> None:
        """Logs ``test/loss``, ``test/acc`` and ``test/f1``."""
        log_evaluation(module, module(batch), batch["labels"], self.test_metrics, "test/loss")

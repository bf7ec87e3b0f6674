"""Accuracy and macro-F1 (torchmetrics) for a classification split."""

from __future__ import annotations

from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from compress.distill.losses import hard_ce


def classification_metrics(num_labels: int, prefix: str) -> MetricCollection:
    """``{prefix}acc`` (micro accuracy) and ``{prefix}f1`` (macro-F1), ignoring unlabelled rows."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_labels, average="micro", ignore_index=-100),
            "f1": MulticlassF1Score(num_labels, average="macro", ignore_index=-100),
        },
        prefix=prefix,
    )


def log_evaluation(
    module: LightningModule, logits: Tensor, labels: Tensor, metrics: MetricCollection, loss_name: str
) -> None:
    """Updates ``metrics`` and logs them with the hard-label loss ``loss_name`` for one batch."""
    metrics.update(logits, labels)
    # sync_dist: under DDP the logged loss is the mean over every rank's rows, not rank 0's half
    module.log(loss_name, hard_ce(logits, labels), batch_size=len(labels), sync_dist=True)
    module.log_dict(metrics, prog_bar=True, batch_size=len(labels))

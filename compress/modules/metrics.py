"""Accuracy and macro-F1 (torchmetrics) for a classification split."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


def classification_metrics(num_labels: int, prefix: str) -> MetricCollection:
    """``{prefix}acc`` (micro accuracy) and ``{prefix}f1`` (macro-F1), ignoring unlabelled rows."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_labels, average="micro", ignore_index=-100),
            "f1": MulticlassF1Score(num_labels, average="macro", ignore_index=-100),
        },
        prefix=prefix,
    )

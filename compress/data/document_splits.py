"""Deterministic test/validation/train splits by document: one seeded permutation, cut in three.

Splitting documents (not blocks) keeps every document's tokens in one split: no text seen in training
is scored in validation or test.

Example:
    >>> import datasets
    >>> from types import SimpleNamespace
    >>> from compress.data.document_splits import split_documents
    >>> docs = datasets.Dataset.from_dict({"text": [f"document {i}" for i in range(100)]})
    >>> h = SimpleNamespace(test_size=0.1, val_size=5, max_train_documents=50, max_eval_documents=None,
    ...                     seed=0)
    >>> {name: len(ds) for name, ds in split_documents(docs, h).items()}
    {'train': 50, 'validation': 5, 'test': 10}
"""

from __future__ import annotations

import datasets
import torch


def check_document_split_settings(h) -> None:
    """Raises a ValueError naming the field for split settings that `split_documents` cannot honour."""
    for field in ("test_size", "val_size"):
        size = h[field]
        if isinstance(size, bool) or not isinstance(size, (int, float)):
            raise ValueError(f"data.{field}: {size!r} must be a fraction in (0, 1) or a document count")
        if isinstance(size, float) and not 0 < size < 1 or isinstance(size, int) and size < 1:
            raise ValueError(f"data.{field}: {size!r} must be a fraction in (0, 1) or a positive count")
    fractions = [h[f] for f in ("test_size", "val_size") if isinstance(h[f], float)]
    if sum(fractions) >= 1:
        raise ValueError(
            f"data.test_size/val_size: {h.test_size!r} + {h.val_size!r} leave no training documents; "
            "lower them so that their sum is below 1"
        )
    for field in ("max_train_documents", "max_eval_documents"):
        if h[field] is not None and h[field] < 1:
            raise ValueError(f"data.{field}: {h[field]!r} must be a positive count or null (no limit)")


def split_documents(docs: datasets.Dataset, h) -> dict[str, datasets.Dataset]:
    """Train/validation/test documents from one permutation drawn from ``h.seed``: test first, then
    validation, the rest training; ``test_size``/``val_size`` are fractions of all documents or counts.
    Each split keeps the permutation's order; ``max_*_documents`` keep its first documents."""
    total = len(docs)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(h.seed)).tolist()
    test, val = _count(h.test_size, total, "test_size"), _count(h.val_size, total, "val_size")
    if test + val >= total:
        raise ValueError(
            f"data.test_size/val_size: {test} test + {val} validation documents leave none of the {total} "
            "for training; lower data.test_size/val_size or use more documents"
        )
    parts = {"train": order[test + val :], "validation": order[test : test + val], "test": order[:test]}
    eval_limit = h.max_eval_documents
    limits = {"train": h.max_train_documents, "validation": eval_limit, "test": eval_limit}
    return {name: docs.select(rows[: limits[name]]) for name, rows in parts.items()}


def _count(size: int | float, total: int, field: str) -> int:
    count = round(size * total) if isinstance(size, float) else size
    if count < 1:
        raise ValueError(
            f"data.{field}: {size!r} of {total} documents is an empty split; raise data.{field} or use "
            "more documents"
        )
    return count

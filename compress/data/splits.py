"""Deterministic stratified train/validation/test splits of labelled rows, limits and the transfer set.

Example:
    >>> from types import SimpleNamespace
    >>> from compress.data.sources import load_source
    >>> from compress.data.splits import split_rows
    >>> h = SimpleNamespace(test_size=0.1, val_size=0.1, max_train_examples=100, max_eval_examples=50,
    ...                     transfer_fraction=0.0, include_transfer=True, seed=0)
    >>> {name: len(ds) for name, ds in split_rows(load_source("rotten_tomatoes"), h).items()}
    {'train': 100, 'validation': 50, 'test': 50}
"""

from __future__ import annotations

import datasets

from compress.data.columns import UNLABELLED


def check_split_settings(h) -> None:
    """Raises a ValueError naming the field for split settings that `split_rows` cannot honour."""
    for field in ("test_size", "val_size"):
        size = h[field]
        if isinstance(size, float) and not 0 < size < 1 or isinstance(size, int) and size < 1:
            raise ValueError(f"data.{field}: {size!r} must be a fraction in (0, 1) or a positive row count")
    for field in ("max_train_examples", "max_eval_examples"):
        if h[field] is not None and h[field] < 1:
            raise ValueError(f"data.{field}: {h[field]!r} must be a positive row count or null (no limit)")
    if not 0 <= h.transfer_fraction < 1:
        raise ValueError(f"data.transfer_fraction: {h.transfer_fraction!r} must be in [0, 1)")


def split_rows(raw: datasets.Dataset, h) -> dict[str, datasets.Dataset]:
    """Deterministic stratified train/validation/test splits, limits and the transfer set, from ``h.seed``."""
    rest, test = _stratified_split(raw, h.test_size, h.seed, "test_size")
    train, val = _stratified_split(rest, h.val_size, h.seed, "val_size")
    train = _stratified_take(train, h.max_train_examples, h.seed)
    val, test = (_stratified_take(ds, h.max_eval_examples, h.seed) for ds in (val, test))
    train = train.cast_column("label", datasets.Value("int64"))
    if h.transfer_fraction > 0:
        labelled, transfer = _stratified_split(train, h.transfer_fraction, h.seed, "transfer_fraction")
        transfer = transfer.map(lambda b: {"label": [UNLABELLED] * len(b["label"])}, batched=True)
        train = datasets.concatenate_datasets([labelled, transfer]) if h.include_transfer else labelled
    splits = {"train": train, "validation": val, "test": test}
    for name, ds in splits.items():
        if len(ds) == 0:
            raise ValueError(f"data: the {name} split is empty; lower test_size/val_size or use more rows")
    return splits


def _stratified_split(ds: datasets.Dataset, size: float | int, seed: int, field: str):
    """(rest, part) with ``part`` holding ``size`` rows (fraction or count), class proportions kept."""
    count = round(size * len(ds)) if isinstance(size, float) else size
    if count <= 0 or count >= len(ds):
        raise ValueError(
            f"data.{field}: {size!r} leaves an empty split of {len(ds)} rows; choose a smaller value"
        )
    stratify = "label" if isinstance(ds.features["label"], datasets.ClassLabel) else None
    if stratify is None:  # after the int64 cast: stratify through a temporary ClassLabel column
        names = [str(i) for i in range(max(ds["label"]) + 1)]
        ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    try:
        parts = ds.train_test_split(test_size=count, stratify_by_column="label", seed=seed)
    except ValueError as err:
        raise ValueError(
            f"data.{field}: cannot split {len(ds)} rows by class ({err}); use more rows"
        ) from err
    if stratify is None:
        parts = {k: v.cast_column("label", datasets.Value("int64")) for k, v in parts.items()}
    return parts["train"], parts["test"]


def _stratified_take(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return _stratified_split(ds, limit, seed, "max_examples")[1]

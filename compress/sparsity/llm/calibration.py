"""Calibration batches for LLM pruning: a few hundred token sequences, held on the CPU.

`calibration_batches` takes what a user has at hand — a `LanguageModelingDataModule` (its training
split), any DataLoader or iterable of ``{"input_ids", "attention_mask"}`` batches, or a tensor of ids — and
returns at most ``num_sequences`` rows as a list of batches. Every pruning function in
`compress.sparsity.llm` reads its calibration data through it, so they all accept the same inputs.

Example:
    >>> import torch
    >>> batches = calibration_batches(torch.randint(0, 50, (10, 16)), num_sequences=6, batch_size=4)
    >>> [tuple(b["input_ids"].shape) for b in batches], int(batches[0]["attention_mask"].sum())
    ([(4, 16), (2, 16)], 64)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

Batch = dict[str, torch.Tensor]
Calibration = Any  # a LightningDataModule, an iterable of batches, or a LongTensor of ids


def calibration_batches(source: Calibration, num_sequences: int = 128, batch_size: int = 8) -> list[Batch]:
    """At most ``num_sequences`` rows of ``source``: CPU batches of ``input_ids`` and ``attention_mask``."""
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be at least 1, got {num_sequences}.")
    if isinstance(source, torch.Tensor):
        return _from_ids(source[:num_sequences], batch_size)
    batches, rows = [], 0
    for batch in _iterate(source):
        batch = _checked(batch)
        take = min(num_sequences - rows, batch["input_ids"].shape[0])
        batches.append({key: value[:take] for key, value in batch.items()})
        rows += take
        if rows >= num_sequences:
            break
    if not batches:
        raise ValueError("The calibration data is empty: give at least one sequence of token ids.")
    return batches


def _iterate(source: Calibration) -> Iterable[Any]:
    if hasattr(source, "train_dataloader") and hasattr(source, "setup"):  # a LightningDataModule
        source.setup("fit")
        return source.train_dataloader()
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes, Mapping)):
        return source
    raise TypeError(
        f"calibration must be a LanguageModelingDataModule, an iterable of batches with 'input_ids' (a "
        f"DataLoader) or a LongTensor of ids; got {type(source).__name__}."
    )


def _checked(batch: Any) -> Batch:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError(
            "Each calibration batch must be a mapping with 'input_ids' (and optionally 'attention_mask'), "
            f"as a LanguageModelingDataModule yields; got {type(batch).__name__}."
        )
    ids = torch.as_tensor(batch["input_ids"]).cpu()
    if ids.dim() != 2:
        raise ValueError(f"calibration input_ids must be [batch, tokens]; got shape {tuple(ids.shape)}.")
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).cpu()
    return {"input_ids": ids, "attention_mask": mask}


def _from_ids(ids: torch.Tensor, batch_size: int) -> list[Batch]:
    if ids.dim() != 2 or ids.is_floating_point():
        raise ValueError(f"calibration ids must be an integer tensor [rows, tokens]; got {tuple(ids.shape)}.")
    return [_checked({"input_ids": chunk}) for chunk in ids.split(batch_size)]


def token_count(batches: list[Batch]) -> int:
    """Real (unpadded) tokens in the batches."""
    return int(sum(batch["attention_mask"].sum() for batch in batches))

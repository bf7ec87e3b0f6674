"""`DynamicPadding`: a collate function that pads each batch to its own longest row.

Example:
    >>> from compress.assets import resolve_model_source
    >>> from transformers import AutoTokenizer
    >>> from compress.data.collate import DynamicPadding
    >>> collate = DynamicPadding(AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6")), None)
    >>> batch = collate([{"input_ids": [101, 7, 102], "labels": 1}, {"input_ids": [101, 102], "labels": 0}])
    >>> batch["input_ids"].shape, batch["labels"].tolist()
    (torch.Size([2, 3]), [1, 0])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from compress.data.columns import EXAMPLE_ID, TEACHER_PREFIX


class DynamicPadding:
    """Pads each batch to its own longest row, student and teacher inputs each with their tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase | None):
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        plain = ("labels", EXAMPLE_ID)
        student = [
            {k: v for k, v in r.items() if not k.startswith(TEACHER_PREFIX) and k not in plain} for r in rows
        ]
        batch = dict(self.tokenizer.pad(student, return_tensors="pt"))
        for key in (k for k in plain if k in rows[0]):
            batch[key] = torch.stack([torch.as_tensor(r[key]) for r in rows])
        if self.teacher_tokenizer is not None:
            teacher = [
                {k[len(TEACHER_PREFIX) :]: v for k, v in r.items() if k.startswith(TEACHER_PREFIX)}
                for r in rows
            ]
            padded = self.teacher_tokenizer.pad(teacher, return_tensors="pt")
            batch.update({TEACHER_PREFIX + k: v for k, v in padded.items()})
        return batch

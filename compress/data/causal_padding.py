"""`CausalPadding`: pads causal-LM rows to the longest row of their batch, on the right.

Padded positions carry the pad id (the tokenizer's pad token, else its eos token), attention 0 and
label -100, so they are neither attended to nor learned. The tokenizer itself is left unchanged.

Example:
    >>> from compress.data.causal_padding import CausalPadding
    >>> from compress.data.tokenizer import load_tokenizer
    >>> collate = CausalPadding(load_tokenizer("smollm2-135m", "data.tokenizer"))
    >>> rows = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
    ...         {"input_ids": [8], "attention_mask": [1], "labels": [8]}]
    >>> batch = collate(rows)
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [8, 2, 2]], [[-100, 6, 7], [8, -100, -100]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from compress.data.columns import EXAMPLE_ID, UNLABELLED


class CausalPadding:
    """A collate function for ``input_ids``/``attention_mask``/``labels`` rows (plus ``example_id``).

    Args:
        tokenizer: gives the pad id: ``pad_token_id``, else ``eos_token_id``.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("data.tokenizer: the tokenizer has neither a pad nor an eos token to pad with")
        self.fill = {"input_ids": pad, "attention_mask": 0, "labels": UNLABELLED}

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        batch = {}
        for key, fill in self.fill.items():
            padded = torch.full((len(rows), longest), fill, dtype=torch.long)
            for i, row in enumerate(rows):
                values = torch.as_tensor(row[key], dtype=torch.long)
                padded[i, : len(values)] = values
            batch[key] = padded
        if EXAMPLE_ID in rows[0]:
            batch[EXAMPLE_ID] = torch.tensor([int(row[EXAMPLE_ID]) for row in rows])
        return batch

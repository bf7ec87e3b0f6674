"""Tiny random Llama models and token batches for the causal-LM module tests."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import quick_trainer


def tiny_llama(vocab: int = 96, layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def batches(rows: int = 8, length: int = 10, batch_size: int = 4, seed: int = 0) -> DataLoader:
    """Rows of random token ids (below 96) with labels; the second half of the rows end in padding."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 96, (rows, length), generator=generator)
    data = []
    for i, row in enumerate(ids):
        mask = torch.ones(length, dtype=torch.long)
        if i >= rows // 2:
            mask[-3:] = 0
        data.append({"input_ids": row, "attention_mask": mask, "labels": row.masked_fill(mask == 0, -100)})
    return DataLoader(data, batch_size=batch_size)


class FirstStep(Callback):
    """Keeps the first training step's loss and the student's gradients."""

    def __init__(self) -> None:
        self.loss, self.grads = None, {}

    def on_after_backward(self, trainer, module) -> None:
        if not self.grads:
            model = getattr(module, "student", None) or module.model
            self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.loss is None:
            self.loss = outputs["loss"].detach()


def first_step(module, loader: DataLoader | None = None) -> FirstStep:
    """Trains ``module`` one step on ``loader`` (default: `batches`) and returns what it saw."""
    seen = FirstStep()
    quick_trainer(steps=1, callbacks=[seen]).fit(module, loader or batches())
    return seen

"""Held-out perplexity of a causal LM: how much a pruning step cost, measured on real text.

``exp`` of the mean next-token cross-entropy over every learned (label ≠ -100) position of the batches,
the same quantity `compress.modules.lm_evaluation.LanguageModelEvaluation` logs as ``val/perplexity``.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2))
    >>> ids = torch.randint(0, 64, (2, 9))
    >>> batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    >>> 30 < perplexity(model, [batch]) < 130  # a random model: about the vocabulary size
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def perplexity(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], max_batches: int | None = None
) -> float:
    """Perplexity of ``model`` over the learned tokens of ``batches`` (at most ``max_batches`` of them)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            labels = batch["labels"].to(device)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            targets = labels[:, 1:]
            losses = nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"
            )
            total += float(losses)
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("perplexity: the batches hold no learned tokens (every label is -100).")
    return math.exp(total / count)

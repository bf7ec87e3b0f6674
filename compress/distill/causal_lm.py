"""Token-level distillation of causal LMs: which positions predict a next token, and the KD loss over them.

Position ``t`` of a sequence predicts token ``t + 1``, so the logits of positions ``0 .. L-2`` meet the
labels of positions ``1 .. L-1`` (labels are given unshifted, as in Hugging Face). A position takes part
when it and its next token are real (``attention_mask`` 1): the soft term covers all of them, the hard
term those whose next label is not -100 (a chat prompt's tokens, with ``completion_only``, are soft only).
A teacher and a student that share a tokenizer but pad their embeddings differently (Qwen-style 151,936
vs 152,064 rows) are compared on the first ``vocab_size`` logits.

`causal_lm_kd_loss` computes the student's logits from its final hidden states chunk by chunk
(`chunked_kd_loss`) when its output head is a plain bias-free Linear, so ``tokens x vocabulary`` logits
never exist whole for the student.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from compress.distill import KDLoss
    >>> from compress.distill.causal_lm import NextTokens, causal_lm_kd_loss
    >>> config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    >>> _ = torch.manual_seed(0)
    >>> student, teacher = LlamaForCausalLM(config), LlamaForCausalLM(config)
    >>> ids = torch.randint(0, 64, (2, 6))
    >>> batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    >>> with torch.no_grad():
    ...     teacher_logits = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    >>> loss = KDLoss(alpha=0.5, temperature=1.0)
    >>> chunked = causal_lm_kd_loss(student, batch, teacher_logits, loss, vocab_size=64, chunk_size=4)
    >>> tokens = NextTokens.of(batch)
    >>> whole = loss.components(tokens.select(student(input_ids=batch["input_ids"]).logits),
    ...     tokens.select(teacher_logits), tokens.labels)
    >>> bool(torch.allclose(chunked["loss"], whole["loss"], atol=1e-6)), tokens.count
    (True, 10)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from compress.distill.chunked import chunked_kd_loss
from compress.distill.losses import IGNORE_INDEX, KDLoss

INPUTS = ("input_ids", "attention_mask")
UNCHUNKABLE = ("final_logit_softcapping", "logit_scale")  # head transforms beyond hidden @ weight.T


@dataclass
class NextTokens:
    """The positions of a causal-LM batch that predict a real next token, and their labels.

    Args:
        valid: ``(B, L-1)`` bool: position t and token t + 1 are both real.
        labels: ``(N,)`` the next-token labels at the valid positions (-100: soft term only).
    """

    valid: Tensor
    labels: Tensor

    @classmethod
    def of(cls, batch: dict[str, Tensor]) -> NextTokens:
        """From ``input_ids``, optional ``attention_mask`` and optional (unshifted) ``labels``."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        labels = batch.get("labels", ids)
        valid = mask[:, 1:] & mask[:, :-1]
        return cls(valid, labels[:, 1:][valid])

    @property
    def count(self) -> int:
        """Number of positions in the soft term."""
        return int(self.valid.sum())

    @property
    def labelled(self) -> Tensor:
        """Number of positions in the hard term, as a tensor."""
        return (self.labels != IGNORE_INDEX).sum()

    def select(self, per_position: Tensor) -> Tensor:
        """``(B, L, ...)`` values (logits, hidden states) at the valid positions: ``(N, ...)``."""
        return per_position[:, :-1][self.valid]


def causal_lm_kd_loss(
    student: nn.Module,
    batch: dict[str, Tensor],
    teacher_logits: Tensor,
    loss: KDLoss,
    vocab_size: int,
    chunk_size: int | None = 1024,
) -> dict[str, Tensor]:
    """``loss.components`` over the next-token positions of ``batch``: ``{"loss", "hard", "soft"}``.

    Args:
        student: a Hugging Face causal LM (or a peft model around one).
        batch: ``input_ids``, ``attention_mask`` and ``labels`` (unshifted; -100: no hard label).
        teacher_logits: the teacher's ``(B, L, V_t)`` logits on the same tokens.
        loss: the `KDLoss` to apply.
        vocab_size: logits compared, from the first (the tokenizer's real size when embeddings are padded).
        chunk_size: tokens per chunk of student logits; None (or a head that cannot be chunked)
            materialises them whole.
    """
    tokens = NextTokens.of(batch)
    teacher = tokens.select(teacher_logits)[:, :vocab_size]
    inputs = {k: batch[k] for k in INPUTS if k in batch}
    head = output_head(student) if chunk_size is not None else None
    if head is None:
        logits = tokens.select(student(**inputs).logits)[:, :vocab_size]
        return loss.components(logits, teacher, tokens.labels)
    hidden = tokens.select(student.get_decoder()(**inputs).last_hidden_state)
    return chunked_kd_loss(hidden, head.weight[:vocab_size], teacher, tokens.labels, loss, chunk_size)


def output_head(model: nn.Module) -> nn.Linear | None:
    """The output embedding when logits are exactly ``decoder_output @ weight.T`` (a plain bias-free
    Linear, not wrapped by an adapter, and no logit soft-capping or scaling), else None."""
    config = getattr(model, "config", None)
    if config is None or any(getattr(config, key, None) for key in UNCHUNKABLE):
        return None
    head = model.get_output_embeddings()
    return head if type(head) is nn.Linear and head.bias is None else None


def shared_vocabulary(models: list[nn.Module]) -> int | None:
    """The vocabulary every causal LM of ``models`` scores (their smallest output size), or None when they
    have no output embeddings (classifiers)."""
    heads = [m.get_output_embeddings() for m in models]
    if any(head is None for head in heads):
        return None
    return min(head.weight.shape[0] for head in heads)

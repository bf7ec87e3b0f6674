"""The KD loss over many tokens and a large vocabulary without materialising ``tokens x vocabulary`` logits.

A causal LM's output head turns ``N`` hidden states into ``N x V`` logits (V = 49,152 for SmolLM2, 128k+
for current LLMs); in fp32 the student's logits, their softmax and their gradient would each take
``4·N·V`` bytes. `chunked_kd_loss` computes the student's logits from its final hidden states and the
output embedding ``chunk_size`` tokens at a time, takes the loss and its gradients for that chunk at once
(Liger-Kernel's fused-linear approach, in plain torch), and keeps only the gradients with respect to the
hidden states and the output weight, so its peak memory is bounded by one chunk. Same loss and gradients
as `KDLoss` on the whole logits (tested to 1e-5 in fp32).

Example:
    >>> import torch
    >>> from compress.distill import KDLoss
    >>> from compress.distill.chunked import chunked_kd_loss
    >>> hidden, weight = torch.randn(10, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    >>> teacher_logits, labels = torch.randn(10, 50), torch.randint(0, 50, (10,))
    >>> loss = KDLoss(alpha=0.5, temperature=2.0)
    >>> parts = chunked_kd_loss(hidden, weight, teacher_logits, labels, loss, chunk_size=4)
    >>> whole = loss.components(hidden @ weight.T, teacher_logits, labels)
    >>> bool(torch.isclose(parts["loss"], whole["loss"])), sorted(parts)
    (True, ['hard', 'loss', 'soft'])
"""

from __future__ import annotations

import torch
from torch import Tensor

from compress.distill.divergences import soft_divergence
from compress.distill.losses import IGNORE_INDEX, KDLoss, hard_ce


def chunked_kd_loss(
    hidden: Tensor,
    weight: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    loss: KDLoss,
    chunk_size: int = 1024,
) -> dict[str, Tensor]:
    """``loss.components(hidden @ weight.T, teacher_logits, labels)``, computed ``chunk_size`` rows at a time.

    Args:
        hidden: the student's final hidden states at the valid positions, ``(N, H)`` (already shifted and
            masked, as for `KDLoss`).
        weight: the student's output embedding ``(V, H)`` (tied or not).
        teacher_logits: ``(N, V)`` (from a cache, or the teacher's head; no gradient flows to it).
        labels: ``(N,)`` next-token labels, -100 for positions without one; None: soft term only.
        loss: the `KDLoss` whose settings (alpha, temperature, divergence, beta) apply.
        chunk_size: rows per chunk; peak memory grows with ``chunk_size x V``.

    Returns:
        ``{"loss", "hard", "soft"}``; only ``"loss"`` carries gradients (to ``hidden`` and ``weight``).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"chunked_kd_loss: hidden {tuple(hidden.shape)} must be (N, H) and weight {tuple(weight.shape)} "
            "(V, H) with the same H; flatten the valid positions first"
        )
    if teacher_logits.shape != (hidden.shape[0], weight.shape[0]):
        raise ValueError(
            f"chunked_kd_loss: teacher_logits {tuple(teacher_logits.shape)} must be (N, V) = "
            f"{(hidden.shape[0], weight.shape[0])}"
        )
    if not isinstance(loss, KDLoss):
        raise TypeError(
            f"chunked_kd_loss.loss: {type(loss).__name__} is not a KDLoss (its settings define the maths)"
        )
    if chunk_size < 1:
        raise ValueError(f"chunked_kd_loss.chunk_size: {chunk_size!r} must be a positive number of rows")
    total, hard, soft = _ChunkedKD.apply(hidden, weight, teacher_logits.detach(), labels, loss, chunk_size)
    return {"loss": total, "hard": hard, "soft": soft}


class _ChunkedKD(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, teacher_logits, labels, loss, chunk_size):
        rows = hidden.shape[0]
        labelled = 0 if labels is None else int((labels != IGNORE_INDEX).sum())
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        weight_leaf = weight.detach().requires_grad_(ctx.needs_input_grad[1])
        hard_sum = soft_sum = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        for start in range(0, rows, chunk_size):
            end = min(start + chunk_size, rows)
            chunk = hidden[start:end].detach().requires_grad_(ctx.needs_input_grad[0])
            with torch.enable_grad():
                logits = chunk @ weight_leaf.T
                soft = soft_divergence(
                    logits, teacher_logits[start:end], loss.temperature, loss.divergence, loss.beta
                )
                soft = soft * (end - start) / max(rows, 1)  # batchmean over the chunk -> share of all rows
                chunk_labels = None if labels is None else labels[start:end]
                hard = hard_ce(logits, chunk_labels, reduction="sum") / max(labelled, 1)
                part = loss.alpha * hard + (1.0 - loss.alpha) * soft
            wanted = [t for t in (chunk, weight_leaf) if t.requires_grad]
            if wanted:
                grads = iter(torch.autograd.grad(part, wanted))
                if grad_hidden is not None:
                    grad_hidden[start:end] = next(grads)
                if grad_weight is not None:
                    grad_weight += next(grads)
            hard_sum, soft_sum = hard_sum + hard.detach(), soft_sum + soft.detach()
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.has = (grad_hidden is not None, grad_weight is not None)
        total = loss.alpha * hard_sum + (1.0 - loss.alpha) * soft_sum
        ctx.mark_non_differentiable(hard_sum, soft_sum)
        return total, hard_sum, soft_sum

    @staticmethod
    def backward(ctx, grad_total, _grad_hard, _grad_soft):
        saved = iter(ctx.saved_tensors)
        grad_hidden = next(saved) * grad_total if ctx.has[0] else None
        grad_weight = next(saved) * grad_total if ctx.has[1] else None
        return grad_hidden, grad_weight, None, None, None, None

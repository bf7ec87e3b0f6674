"""`chunked_kd_loss`: the same loss and gradients as `KDLoss` on whole logits (fp32, 1e-5), for every
divergence, with unlabelled rows, any chunk size, a tied or frozen output weight."""

import pytest
import torch

from compress.distill import KDLoss
from compress.distill.chunked import chunked_kd_loss
from compress.distill.divergences import DIVERGENCES

ROWS, WIDTH, VOCAB = 23, 16, 97


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, WIDTH, generator=generator)
    weight = torch.randn(VOCAB, WIDTH, generator=generator) * 0.5
    teacher = torch.randn(ROWS, VOCAB, generator=generator) * 2
    labels = torch.randint(0, VOCAB, (ROWS,), generator=generator)
    labels[::4] = -100
    return hidden, weight, teacher, labels


def _whole_and_chunked(loss, chunk_size, labels_given=True, seed=0):
    hidden, weight, teacher, labels = _inputs(seed)
    labels = labels if labels_given else None
    results = []
    for chunked in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if chunked:
            parts = chunked_kd_loss(h, w, teacher, labels, loss, chunk_size=chunk_size)
        else:
            parts = loss.components(h @ w.T, teacher, labels)
        grad_h, grad_w = torch.autograd.grad(parts["loss"], (h, w))
        results.append((parts, grad_h, grad_w))
    return results


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 5, ROWS, 64])
def test_same_loss_parts_and_gradients_as_the_whole_logits(divergence, chunk_size):
    loss = KDLoss(alpha=0.3, temperature=2.0, divergence=divergence, beta=0.4)
    (whole, gh, gw), (chunked, ch, cw) = _whole_and_chunked(loss, chunk_size)
    for name in ("loss", "hard", "soft"):
        assert torch.allclose(chunked[name], whole[name], atol=1e-5, rtol=1e-5), name
    assert torch.allclose(ch, gh, atol=1e-5, rtol=1e-4)
    assert torch.allclose(cw, gw, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_the_ends_of_alpha_and_no_labels(alpha):
    loss = KDLoss(alpha=alpha, temperature=1.0)
    for labels_given in (True, False):
        (whole, gh, gw), (chunked, ch, cw) = _whole_and_chunked(loss, 7, labels_given)
        assert torch.allclose(chunked["loss"], whole["loss"], atol=1e-5)
        assert torch.allclose(ch, gh, atol=1e-5) and torch.allclose(cw, gw, atol=1e-5)


def test_a_tied_output_weight_gets_both_gradients_and_a_frozen_one_none():
    hidden, weight, teacher, labels = _inputs(1)
    embedding = weight.clone().requires_grad_()
    inputs = embedding[torch.arange(ROWS) % VOCAB] + hidden  # the tied matrix is used twice
    chunked = chunked_kd_loss(inputs, embedding, teacher, labels, KDLoss(), chunk_size=6)["loss"]
    (chunked_grad,) = torch.autograd.grad(chunked, embedding)
    inputs = embedding[torch.arange(ROWS) % VOCAB] + hidden
    whole = KDLoss().components(inputs @ embedding.T, teacher, labels)["loss"]
    (whole_grad,) = torch.autograd.grad(whole, embedding)
    assert torch.allclose(chunked_grad, whole_grad, atol=1e-5, rtol=1e-4)
    h = hidden.clone().requires_grad_()
    parts = chunked_kd_loss(h, weight, teacher, labels, KDLoss(), chunk_size=6)  # weight needs no grad
    (grad_h,) = torch.autograd.grad(parts["loss"], h)
    assert torch.isfinite(grad_h).all() and grad_h.abs().sum() > 0


def test_bad_shapes_and_settings_are_refused():
    hidden, weight, teacher, labels = _inputs()
    with pytest.raises(ValueError, match=r"teacher_logits \(23, 96\) must be \(N, V\)"):
        chunked_kd_loss(hidden, weight, teacher[:, :-1], labels, KDLoss())
    with pytest.raises(ValueError, match="same H"):
        chunked_kd_loss(hidden[:, :-1], weight, teacher, labels, KDLoss())
    with pytest.raises(ValueError, match="chunk_size: 0"):
        chunked_kd_loss(hidden, weight, teacher, labels, KDLoss(), chunk_size=0)
    with pytest.raises(TypeError, match="not a KDLoss"):
        chunked_kd_loss(hidden, weight, teacher, labels, object())

"""Property tests for the soft divergences of ``compress.distill.divergences`` (forward KL, reverse KL,
generalized JSD): non-negative, zero for equal logits, values and gradients equal to a naive float64
reference written from the definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.distill import KDLoss
from compress.distill.divergences import DIVERGENCES, soft_divergence
from tests.compress.distill.test_losses import TEMPERATURE, logits_pair

SETTINGS = settings(max_examples=40, deadline=None)
BETA = st.floats(0.05, 0.95)


def naive(student: torch.Tensor, teacher: torch.Tensor, t: float, divergence: str, beta: float = 0.5):
    """T²·D(P_t, P_s) per the definitions, in float64, averaged over rows."""
    p_s, p_t = (student.double() / t).softmax(-1), (teacher.double() / t).softmax(-1)

    def kl(p, q):  # KL(p ‖ q) per row
        return (p * (p.log() - q.log())).sum(-1)

    if divergence == "forward_kl":
        value = kl(p_t, p_s)
    elif divergence == "reverse_kl":
        value = kl(p_s, p_t)
    else:
        m = beta * p_t + (1 - beta) * p_s
        value = beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
    return value.mean() * t**2


@pytest.mark.parametrize("divergence", DIVERGENCES)
@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE, beta=BETA)
def test_non_negative_and_zero_for_equal_logits(divergence, pair, t, beta):
    student, teacher = pair
    assert soft_divergence(student, teacher, t, divergence, beta).item() >= -1e-5 * max(1.0, t**2)
    assert abs(soft_divergence(student, student.clone(), t, divergence, beta).item()) <= 1e-5 * max(1.0, t**2)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE, beta=BETA)
def test_value_and_gradient_match_the_naive_reference(divergence, pair, t, beta):
    student, teacher = pair
    ours_in = student.double().requires_grad_()
    ours = soft_divergence(ours_in, teacher.double(), t, divergence, beta)
    (ours_grad,) = torch.autograd.grad(ours, ours_in)
    ref_in = student.double().requires_grad_()
    ref = naive(ref_in, teacher, t, divergence, beta)
    (ref_grad,) = torch.autograd.grad(ref, ref_in)
    scale = max(1.0, abs(ref.item()))
    assert abs(ours.item() - ref.item()) <= 1e-7 * scale
    assert torch.allclose(ours_grad, ref_grad, atol=1e-8 * scale, rtol=1e-6)


@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE)
def test_symmetric_jsd_does_not_care_which_side_is_the_teacher(pair, t):
    student, teacher = pair
    forward = soft_divergence(student, teacher, t, "jsd", 0.5)
    swapped = soft_divergence(teacher, student, t, "jsd", 0.5)
    assert abs(forward.item() - swapped.item()) <= 1e-5 * max(1.0, t**2)


@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE)
def test_forward_kl_is_the_loss_of_before_bit_for_bit(pair, t):
    """The default keeps the demo's numbers: exactly the formula KDLoss computed before divergences."""
    student, teacher = pair
    before = (
        F.kl_div(F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="batchmean") * t**2
    )
    assert torch.equal(soft_divergence(student, teacher, t), before)
    assert torch.equal(KDLoss(alpha=0.0, temperature=t).components(student, teacher)["soft"], before)


def test_the_divergences_differ_and_each_trains_through_kdloss():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 0.0]])
    values = {d: KDLoss(alpha=0.0, temperature=1.0, divergence=d)(student, teacher) for d in DIVERGENCES}
    assert len({round(v.item(), 6) for v in values.values()}) == 3
    for value in values.values():
        (grad,) = torch.autograd.grad(value, student)
        assert grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_sequence_logits_use_only_valid_positions():
    student, teacher = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    for divergence in DIVERGENCES:
        loss = KDLoss(alpha=0.0, temperature=2.0, divergence=divergence)
        whole = loss(student, teacher, attention_mask=mask)
        kept = mask.bool()
        assert torch.allclose(whole, soft_divergence(student[kept], teacher[kept], 2.0, divergence))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"divergence": "kl"}, "KDLoss.divergence: 'kl' must be one of forward_kl, reverse_kl, jsd"),
        ({"divergence": "jsd", "beta": 0.0}, r"KDLoss.beta: 0.0 must be in \(0, 1\) for jsd"),
        ({"divergence": "jsd", "beta": 1.0}, r"KDLoss.beta: 1.0 must be in \(0, 1\) for jsd"),
    ],
)
def test_bad_divergence_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KDLoss(**kwargs)

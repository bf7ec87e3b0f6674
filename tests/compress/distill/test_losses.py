"""Property tests for the Hinton KD loss in ``compress.distill.losses``.

L = alpha * CE(z_s, y) + (1 - alpha) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), KL with "batchmean".
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from compress.distill.losses import IGNORE_INDEX, KDLoss, hard_ce, soft_kl

SETTINGS = settings(max_examples=50, deadline=None)
LOGIT = st.floats(-20.0, 20.0, allow_nan=False, allow_infinity=False, width=32)
TEMPERATURE = st.floats(0.5, 8.0)
ALPHA = st.floats(0.0, 1.0)


def _close(a: torch.Tensor | float, b: torch.Tensor | float, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
    a, b = (x.detach().item() if isinstance(x, torch.Tensor) else x for x in (a, b))
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


@st.composite
def logits_pair(draw, min_rows: int = 1, max_rows: int = 8):
    """(student, teacher) float32 tensors of shape (N, C), N in [min_rows, max_rows], C in [2, 10]."""
    n = draw(st.integers(min_rows, max_rows))
    c = draw(st.integers(2, 10))
    student = draw(hnp.arrays(np.float32, (n, c), elements=LOGIT))
    teacher = draw(hnp.arrays(np.float32, (n, c), elements=LOGIT))
    return torch.from_numpy(student), torch.from_numpy(teacher)


@st.composite
def labels_for(draw, n: int, c: int, unlabelled_ok: bool = True) -> torch.Tensor:
    choices = (st.integers(0, c - 1) | st.just(IGNORE_INDEX)) if unlabelled_ok else st.integers(0, c - 1)
    return torch.tensor(draw(st.lists(choices, min_size=n, max_size=n)), dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------
# Reference implementation (float64, explicit loops, manual softmax)
# ----------------------------------------------------------------------------------------------------------


def _log_softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    log_z = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - log_z for v in row]


def reference_soft(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    rows = student.shape[0]
    if rows == 0:
        return 0.0
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist(), strict=True):
        log_ps = _log_softmax_row([v / t for v in s_row])
        log_pt = _log_softmax_row([v / t for v in t_row])
        total += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps, strict=True))
    return total / rows * t**2


def reference_hard(student: torch.Tensor, labels: torch.Tensor | None) -> float:
    if labels is None:
        return 0.0
    losses = [
        -_log_softmax_row(row)[y]
        for row, y in zip(student.double().tolist(), labels.tolist(), strict=True)
        if y != IGNORE_INDEX
    ]
    return sum(losses) / len(losses) if losses else 0.0


# ----------------------------------------------------------------------------------------------------------
# 1-2. KL is non-negative and vanishes when student == teacher
# ----------------------------------------------------------------------------------------------------------


@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE)
def test_soft_term_is_non_negative(pair, t):
    student, teacher = pair
    # The KL itself is >= -1e-6 (float32 rounding); the T^2 factor scales that rounding error too.
    assert soft_kl(student, teacher, t).item() >= -1e-6 * max(1.0, t**2)


@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE)
def test_soft_term_vanishes_when_student_equals_teacher(pair, t):
    student, _ = pair
    assert abs(soft_kl(student, student.clone(), t).item()) <= 1e-5
    assert abs(KDLoss(alpha=0.0, temperature=t)(student, student.clone()).item()) <= 1e-5


# ----------------------------------------------------------------------------------------------------------
# 3. Shift invariance of softmax-based losses
# ----------------------------------------------------------------------------------------------------------


@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE, alpha=ALPHA, data=st.data())
def test_loss_invariant_to_per_row_and_global_logit_shifts(pair, t, alpha, data):
    student, teacher = pair
    n, c = student.shape
    labels = data.draw(labels_for(n, c))
    row_shift = torch.from_numpy(data.draw(hnp.arrays(np.float32, (n, 1), elements=LOGIT)))
    global_shift = data.draw(LOGIT)
    loss = KDLoss(alpha=alpha, temperature=t)
    base = loss(student, teacher, labels)
    for shift in (row_shift, global_shift, row_shift + global_shift):
        assert _close(loss(student + shift, teacher, labels), base), "student shift changed the loss"
        assert _close(loss(student, teacher + shift, labels), base), "teacher shift changed the loss"


# ----------------------------------------------------------------------------------------------------------
# 4. The T^2 factor keeps soft-term gradients on the same scale across temperatures
# ----------------------------------------------------------------------------------------------------------


def _soft_grad_norm(student: torch.Tensor, teacher: torch.Tensor, t: float, t2_scaled: bool) -> float:
    student = student.clone().requires_grad_(True)
    value = soft_kl(student, teacher, t)
    if not t2_scaled:
        value = value / t**2
    value.backward()
    return student.grad.norm().item()


def test_t_squared_keeps_soft_gradient_scale_independent_of_temperature():
    gen = torch.Generator().manual_seed(0)
    student = 0.5 * torch.randn(6, 5, generator=gen)
    teacher = 0.5 * torch.randn(6, 5, generator=gen)

    scaled = _soft_grad_norm(student, teacher, 4.0, True) / _soft_grad_norm(student, teacher, 8.0, True)
    assert 0.8 <= scaled <= 1.25

    # Without T^2 the gradient shrinks ~1/T^2: doubling T divides it by ~4.
    unscaled = _soft_grad_norm(student, teacher, 4.0, False) / _soft_grad_norm(student, teacher, 8.0, False)
    assert unscaled > 3.0


# ----------------------------------------------------------------------------------------------------------
# 5. Agreement with an explicit reference computation
# ----------------------------------------------------------------------------------------------------------


@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE, alpha=ALPHA, data=st.data())
def test_matches_reference_implementation(pair, t, alpha, data):
    student, teacher = pair
    n, c = student.shape
    labels = data.draw(st.none() | labels_for(n, c))
    parts = KDLoss(alpha=alpha, temperature=t).components(student, teacher, labels)

    soft, hard = reference_soft(student, teacher, t), reference_hard(student, labels)
    assert _close(parts["soft"], soft)
    assert _close(parts["hard"], hard)
    assert _close(parts["loss"], alpha * hard + (1 - alpha) * soft)


# ----------------------------------------------------------------------------------------------------------
# 6. Unlabelled (-100) rows only enter the soft term
# ----------------------------------------------------------------------------------------------------------


@SETTINGS
@given(pair=logits_pair(min_rows=2), t=TEMPERATURE, data=st.data())
def test_unlabelled_rows_do_not_affect_hard_term(pair, t, data):
    student, teacher = pair
    n, c = student.shape
    labels = data.draw(labels_for(n, c))
    row = data.draw(st.integers(0, n - 1))
    labels[row] = IGNORE_INDEX
    new_student_row = torch.from_numpy(data.draw(hnp.arrays(np.float32, (c,), elements=LOGIT)))
    new_teacher_row = torch.from_numpy(data.draw(hnp.arrays(np.float32, (c,), elements=LOGIT)))

    loss = KDLoss(alpha=0.5, temperature=t)
    before = loss.components(student, teacher, labels)
    student2, teacher2 = student.clone(), teacher.clone()
    student2[row], teacher2[row] = new_student_row, new_teacher_row
    after = loss.components(student2, teacher2, labels)

    assert _close(after["hard"], before["hard"], atol=1e-6, rtol=1e-6)
    assert _close(after["hard"], reference_hard(student, labels))


def test_unlabelled_row_still_enters_soft_term():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, IGNORE_INDEX])
    loss = KDLoss(alpha=0.5, temperature=2.0)
    before = loss.components(student, teacher, labels)
    teacher2 = teacher.clone()
    teacher2[1] = torch.tensor([3.0, -3.0, 0.0])
    after = loss.components(student, teacher2, labels)
    assert after["hard"] == before["hard"]
    assert after["soft"].item() > before["soft"].item() + 0.1


@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE, alpha=ALPHA)
def test_all_unlabelled_batch_has_zero_hard_term_and_finite_gradient(pair, t, alpha):
    student, teacher = pair
    student = student.clone().requires_grad_(True)
    labels = torch.full((student.shape[0],), IGNORE_INDEX, dtype=torch.long)
    parts = KDLoss(alpha=alpha, temperature=t).components(student, teacher, labels)

    assert parts["hard"].item() == 0.0
    assert torch.isfinite(parts["loss"])
    assert _close(parts["loss"], (1 - alpha) * parts["soft"].item(), atol=1e-6, rtol=1e-6)
    parts["loss"].backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()


# ----------------------------------------------------------------------------------------------------------
# 7. alpha endpoints and argument validation
# ----------------------------------------------------------------------------------------------------------


@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE, data=st.data())
def test_alpha_endpoints_select_one_term(pair, t, data):
    student, teacher = pair
    labels = data.draw(labels_for(*student.shape))

    pure_kd = KDLoss(alpha=0.0, temperature=t).components(student, teacher, labels)
    assert torch.equal(pure_kd["loss"], pure_kd["soft"])
    assert _close(pure_kd["loss"], soft_kl(student, teacher, t), atol=1e-6, rtol=1e-6)

    pure_ce = KDLoss(alpha=1.0, temperature=t).components(student, teacher, labels)
    assert torch.equal(pure_ce["loss"], pure_ce["hard"])
    assert _close(pure_ce["loss"], hard_ce(student, labels), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("alpha", [-0.1, 1.1, float("nan")])
def test_alpha_out_of_range_raises(alpha):
    with pytest.raises(ValueError, match="alpha"):
        KDLoss(alpha=alpha, temperature=2.0)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_non_positive_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(alpha=0.5, temperature=temperature)


def test_valid_arguments_are_accepted():
    for alpha in (0.0, 0.5, 1.0):
        assert KDLoss(alpha=alpha, temperature=1e-3).alpha == alpha


# ----------------------------------------------------------------------------------------------------------
# 8. Sequence outputs (B, L, V) with padding
# ----------------------------------------------------------------------------------------------------------


@st.composite
def sequence_batch(draw):
    b, length, v = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(2, 10))
    student = torch.from_numpy(draw(hnp.arrays(np.float32, (b, length, v), elements=LOGIT)))
    teacher = torch.from_numpy(draw(hnp.arrays(np.float32, (b, length, v), elements=LOGIT)))
    labels = draw(labels_for(b * length, v)).reshape(b, length)
    mask = torch.from_numpy(draw(hnp.arrays(np.bool_, (b, length)))).long()
    return student, teacher, labels, mask


@SETTINGS
@given(batch=sequence_batch(), t=TEMPERATURE, alpha=ALPHA)
def test_sequence_loss_equals_loss_on_gathered_valid_positions(batch, t, alpha):
    student, teacher, labels, mask = batch
    assume(bool(mask.any()) and not bool(mask.all()))  # some padding and some valid positions
    loss = KDLoss(alpha=alpha, temperature=t)
    seq = loss.components(student, teacher, labels, attention_mask=mask)

    keep = mask.bool()
    flat = loss.components(student[keep], teacher[keep], labels[keep])
    for key in ("loss", "hard", "soft"):
        assert _close(seq[key], flat[key], atol=1e-6, rtol=1e-6), key
    assert _close(seq["soft"], reference_soft(student[keep], teacher[keep], t))
    assert _close(seq["hard"], reference_hard(student[keep], labels[keep]))


@SETTINGS
@given(batch=sequence_batch(), t=TEMPERATURE, alpha=ALPHA, data=st.data())
def test_padded_positions_do_not_affect_the_loss(batch, t, alpha, data):
    student, teacher, labels, mask = batch
    assume(not bool(mask.all()))
    pad = ~mask.bool()
    k, v = int(pad.sum()), student.shape[-1]
    student2, teacher2, labels2 = student.clone(), teacher.clone(), labels.clone()
    student2[pad] = torch.from_numpy(data.draw(hnp.arrays(np.float32, (k, v), elements=LOGIT)))
    teacher2[pad] = torch.from_numpy(data.draw(hnp.arrays(np.float32, (k, v), elements=LOGIT)))
    labels2[pad] = data.draw(labels_for(k, v))

    loss = KDLoss(alpha=alpha, temperature=t)
    before = loss.components(student, teacher, labels, attention_mask=mask)
    after = loss.components(student2, teacher2, labels2, attention_mask=mask)
    for key in ("loss", "hard", "soft"):
        assert _close(after[key], before[key], atol=1e-6, rtol=1e-6), key


def test_fully_padded_batch_gives_zero_loss_with_graph():
    student = torch.randn(2, 3, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4)
    labels = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.zeros(2, 3, dtype=torch.long)
    out = KDLoss(alpha=0.5, temperature=2.0)(student, teacher, labels, attention_mask=mask)
    assert out.item() == 0.0
    out.backward()
    assert student.grad is not None
    assert torch.count_nonzero(student.grad) == 0


# ----------------------------------------------------------------------------------------------------------
# 9. Shape mismatch
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((4, 3), (4, 5)), ((4, 3), (3, 3)), ((2, 5, 7), (2, 5, 6)), ((2, 5, 7), (2, 4, 7))],
)
def test_shape_mismatch_raises(student_shape, teacher_shape):
    with pytest.raises(ValueError, match="num_labels"):
        KDLoss()(torch.randn(*student_shape), torch.randn(*teacher_shape))


# ----------------------------------------------------------------------------------------------------------
# 10. "batchmean", not "mean"
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")
@SETTINGS
@given(pair=logits_pair(), t=TEMPERATURE)
def test_soft_term_uses_batchmean_not_mean(pair, t):
    student, teacher = pair
    n, v = student.shape
    log_ps = F.log_softmax(student / t, dim=-1)
    p_t = F.softmax(teacher / t, dim=-1)
    per_row = F.kl_div(log_ps, p_t, reduction="none").sum(dim=-1)  # true KL per example

    soft = soft_kl(student, teacher, t)
    assert _close(soft, t**2 * per_row.sum().item() / n)

    mean_reduced = F.kl_div(log_ps, p_t, reduction="mean") * t**2
    assume(mean_reduced.item() > 1e-6)  # ratio is meaningless when the KL is ~0
    assert _close(soft / mean_reduced, v, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# 11. Gradient flows to the student only
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gradient_flows_to_student_only(alpha):
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(5, 4, generator=gen, requires_grad=True)
    teacher = torch.randn(5, 4, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 3, IGNORE_INDEX, 1, 2])
    KDLoss(alpha=alpha, temperature=3.0)(student, teacher, labels).backward()

    assert teacher.grad is None
    assert student.grad is not None
    assert torch.count_nonzero(student.grad) > 0

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.sparsity.magnitude import magnitude_masks, nm_mask, parse_pattern, prune_smallest, sparsity_of
from compress.sparsity.schedule import CubicSparsitySchedule

shapes = st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4)
sparsities = st.lists(st.floats(0.0, 0.99), min_size=1, max_size=5).map(sorted)


def weights_for(shape_list, seed: int, ties: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate(shape_list):
        w = torch.randn(shape, generator=g)
        out[f"w{i}"] = w.round() if ties else w  # rounding makes many exact ties
    return out


@settings(max_examples=60, deadline=None)
@given(shapes, sparsities, st.sampled_from(["global", "layer"]), st.integers(0, 99), st.booleans())
def test_exact_counts_and_no_revival(shape_list, targets, scope, seed, ties):
    weights = weights_for(shape_list, seed, ties)
    masks = None
    for sparsity in targets:
        new = magnitude_masks(weights, sparsity, scope, previous=masks)
        if scope == "layer":
            for name, w in weights.items():
                assert int((~new[name]).sum()) == round(sparsity * w.numel())
        else:
            total = sum(w.numel() for w in weights.values())
            assert sum(int((~m).sum()) for m in new.values()) == round(sparsity * total)
        if masks is not None:
            for name in weights:
                assert not (new[name] & ~masks[name]).any(), "a pruned weight came back"
        masks = new
        weights = {name: w * masks[name] for name, w in weights.items()}  # training keeps them at zero


def test_smallest_magnitudes_go_first():
    w = {"a": torch.tensor([[-0.1, 5.0, 0.3, -4.0]])}
    assert magnitude_masks(w, 0.5, "layer")["a"].tolist() == [[False, True, False, True]]


def test_prune_smallest_breaks_ties_by_position():
    assert prune_smallest(torch.zeros(5), 2).tolist() == [True, True, False, False, False]
    assert not prune_smallest(torch.ones(3), 0).any()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.sampled_from([(2, 4), (1, 4), (4, 8)]), st.integers(0, 99))
def test_nm_masks_keep_n_largest_of_every_m(rows, groups, nm, seed):
    n, m = nm
    w = torch.randn(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    keep = nm_mask(w, n, m)
    assert (keep.view(-1, m).sum(1) == n).all()
    kept_min = w.abs().masked_fill(~keep, float("inf")).view(-1, m).min(1).values
    dropped_max = w.abs().masked_fill(keep, -1.0).view(-1, m).max(1).values
    assert (kept_min >= dropped_max).all()
    assert sparsity_of({"w": keep}) == pytest.approx(1 - n / m)


def test_nm_on_conv_groups_flattened_inputs_and_rejects_bad_sizes():
    conv = torch.randn(4, 2, 2, 2)  # 8 inputs per output channel
    assert (nm_mask(conv, 2, 4).reshape(-1, 4).sum(1) == 2).all()
    with pytest.raises(ValueError, match="multiple of m=4"):
        nm_mask(torch.randn(3, 6), 2, 4)


@pytest.mark.parametrize("bad", ["3:2", "0:4", "2-4", "half"])
def test_bad_patterns_name_the_field(bad):
    with pytest.raises(ValueError, match="pattern"):
        parse_pattern(bad)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 0.5), st.floats(0.5, 0.99), st.integers(0, 50), st.integers(1, 300), st.integers(1, 40))
def test_schedule_is_monotone_cumulative_and_reaches_the_target(initial, target, start, span, frequency):
    schedule = CubicSparsitySchedule(target, initial, start, start + span, frequency)
    values = [schedule.sparsity_at(t) for t in range(start + span + 20)]
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert schedule.sparsity_at(start) == pytest.approx(initial)
    assert values[start + span] == target and values[-1] == target
    steps = [t for t in range(start + span + 20) if schedule.is_pruning_step(t)]
    assert steps[0] == start and steps[-1] == start + span
    assert all(b - a <= frequency for a, b in zip(steps, steps[1:], strict=False))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(target_sparsity=1.0), "target_sparsity"),
        (dict(target_sparsity=0.5, initial_sparsity=0.6), "initial_sparsity"),
        (dict(start_step=10, end_step=5), "end_step"),
        (dict(frequency=0), "frequency"),
    ],
)
def test_schedule_rejects_bad_settings(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CubicSparsitySchedule(**kwargs)

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compress.sparsity import l1
from compress.sparsity.groups import channel_groups
from compress.sparsity.targets import select_targets
from tests.conftest import tiny_bert


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 2))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 999), st.floats(1e-4, 1.0))
def test_subgradient_equals_autograd_of_the_penalty(seed, strength):
    net = mlp(seed)
    weights = [net[0].weight, net[2].weight]
    (strength * sum(w.abs().sum() for w in weights)).backward()
    expected = [w.grad.clone() for w in weights]
    for w in weights:
        w.grad.zero_()
    l1.add_l1_subgradient(weights, strength)
    for w, e in zip(weights, expected, strict=True):
        torch.testing.assert_close(w.grad, e)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 999), st.floats(0.0, 2.0))
def test_soft_threshold_is_the_l1_proximal_operator(seed, threshold):
    w = torch.randn(50, generator=torch.Generator().manual_seed(seed))
    out = l1.soft_threshold_(w.clone(), threshold)
    assert torch.all(out[w.abs() <= threshold] == 0)
    big = w.abs() > threshold
    torch.testing.assert_close(out[big], w[big] - threshold * torch.sign(w[big]))


def ffn_groups(net: nn.Sequential) -> list[l1.ChannelGroup]:
    targets = {"0": net[0], "2": net[2], "4": net[4]}
    return channel_groups(net, torch.randn(1, 5), targets)


def test_groups_couple_producer_rows_with_consumer_columns():
    groups = ffn_groups(mlp())
    shapes = [[(tuple(w.shape), dim) for w, dim, _ in g] for g in groups]
    assert sorted(shapes) == [[((4, 7), 0), ((2, 4), 1)], [((7, 5), 0), ((4, 7), 1)]]


def test_group_lasso_subgradient_equals_autograd():
    net = mlp(1)
    groups = ffn_groups(net)
    penalty = sum(
        torch.sqrt(
            sum(w.index_select(d, i).movedim(d, 0).reshape(len(i), -1).pow(2).sum(1) for w, d, i in g)
        ).sum()
        for g in groups
    )
    (0.3 * penalty).backward()
    expected = {id(p): p.grad.clone() for p in net.parameters() if p.grad is not None}
    net.zero_grad()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    l1.add_group_lasso_subgradient(groups, 0.3)
    for p in net.parameters():
        if id(p) in expected:
            torch.testing.assert_close(p.grad, expected[id(p)])
    assert float(l1.group_lasso_penalty(groups)) == pytest.approx(float(penalty))


def test_group_soft_threshold_zeroes_whole_channels():
    net = mlp(2)
    groups = ffn_groups(net)
    norms = l1.group_norms(groups[0])
    threshold = float(norms.median())
    l1.group_soft_threshold_(groups[0], threshold)
    after = l1.group_norms(groups[0])
    dead = norms <= threshold
    assert dead.any() and torch.all(after[dead] == 0)
    torch.testing.assert_close(after[~dead], norms[~dead] - threshold)
    w, dim, idxs = groups[0][0]
    dead_rows = idxs[dead] if dim == 0 else None
    assert torch.all(w[dead_rows] == 0)


def test_bert_groups_are_attention_and_ffn_channels_of_each_layer():
    model = tiny_bert(layers=2)
    inputs = {
        "input_ids": torch.randint(0, 100, (2, 8)),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
    }
    names = {id(p): n for n, p in model.named_parameters()}
    groups = channel_groups(model, inputs, select_targets(model))
    found = sorted(sorted(names[id(w)].split(".")[-2] for w, _, _ in g) for g in groups)
    assert found == [["dense", "dense"]] * 2 + [["dense", "key", "query", "value"]] * 2
    assert all(len(idxs) in (32, 64) for g in groups for _, _, idxs in g)


def test_near_zero_fraction():
    assert l1.near_zero_fraction([torch.tensor([0.0, 1e-4, 0.5, -2.0])], 1e-3) == 0.5

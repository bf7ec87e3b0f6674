"""One-shot Wanda / SparseGPT / magnitude pruning of tiny random Llama models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from compress.sparsity.llm.decoder import decoder_of
from compress.sparsity.llm.oneshot import prune_oneshot
from compress.sparsity.llm.sparsegpt import Hessian, sparsegpt_prune

TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
)
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
PROJECTIONS += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
NAMES = {f"model.layers.{i}.{part}.weight" for i in range(2) for part in PROJECTIONS}
METHODS = ("wanda", "sparsegpt", "magnitude")


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A random tiny Llama whose hidden features have heterogeneous scales.

    LLMs have outlier features: a few hidden channels far larger than the rest (the reason Wanda weighs
    |W| by ‖X‖). A random init gives every channel the same scale, so the RMSNorm weights are multiplied
    by one fixed log-normal vector.
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides}))
    scales = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(123)).exp()
    with torch.no_grad():
        for norm in decoder_of(model).norms():
            norm.weight.mul_(scales)
    return model


@pytest.fixture(scope="module")
def dense() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 96, (32, 16), generator=torch.Generator().manual_seed(7))


def linear_inputs(model: nn.Module, ids: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """Each Linear of decoder layer ``layer``: its inputs ``[tokens, in]`` in a plain forward of ``model``."""
    seen: dict[str, torch.Tensor] = {}
    modules = {
        f"model.layers.{layer}.{name}.weight": module
        for name, module in model.model.layers[layer].named_modules()
        if isinstance(module, nn.Linear)
    }

    def keep(name):
        return lambda module, args, output: seen.__setitem__(name, args[0].reshape(-1, args[0].shape[-1]))

    handles = [module.register_forward_hook(keep(name)) for name, module in modules.items()]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return seen


def brute_force_wanda(
    weight: torch.Tensor, inputs: torch.Tensor, sparsity: float, nm=None
) -> list[list[bool]]:
    """Wanda's keep-mask by explicit loops: per row, sort |W_ij| · ‖X_j‖₂ and drop the lowest."""
    rows, columns = weight.shape
    norms = [math.sqrt(sum(float(v) ** 2 for v in inputs[:, j].double())) for j in range(columns)]
    keep = []
    for i in range(rows):
        score = [abs(float(weight[i, j])) * norms[j] for j in range(columns)]
        pruned = set()
        if nm is None:
            pruned = set(sorted(range(columns), key=lambda j: (score[j], j))[: round(sparsity * columns)])
        else:
            n, m = nm
            for start in range(0, columns, m):
                group = sorted(range(start, start + m), key=lambda j: -score[j])
                pruned |= set(group[n:])
        keep.append([j not in pruned for j in range(columns)])
    return keep


def pruned_copy(model, calibration, method, **kwargs):
    model = copy.deepcopy(model)
    masks = prune_oneshot(model, calibration, method, progress=False, **kwargs)
    return model, masks


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_wanda_mask_of_the_first_layer_equals_a_brute_force_reference(dense, ids, pattern):
    inputs = linear_inputs(dense, ids, layer=0)
    _, masks = pruned_copy(dense, ids, "wanda", pattern=pattern)
    nm = None if pattern is None else (2, 4)
    for name, x in inputs.items():
        expected = brute_force_wanda(dense.get_parameter(name).detach(), x, 0.5, nm)
        assert masks[name].tolist() == expected, name


def test_wanda_fits_the_second_layer_to_the_pruned_first_layer(dense, ids):
    model, masks = pruned_copy(dense, ids, "wanda")
    first_pruned = copy.deepcopy(dense)
    with torch.no_grad():
        for name, keep in masks.items():
            if name.startswith("model.layers.0."):
                first_pruned.get_parameter(name).mul_(keep)
    for name, x in linear_inputs(first_pruned, ids, layer=1).items():
        assert masks[name].tolist() == brute_force_wanda(dense.get_parameter(name).detach(), x, 0.5), name


@pytest.mark.parametrize("pattern", [None, "2:4"])
@pytest.mark.parametrize("method", METHODS)
def test_every_matrix_is_pruned_exactly_and_nothing_else_changes(dense, ids, method, pattern):
    model, masks = pruned_copy(dense, ids, method, pattern=pattern)
    assert set(masks) == NAMES
    for name, keep in masks.items():
        weight = model.get_parameter(name)
        assert keep.dtype == torch.bool and keep.shape == weight.shape
        assert torch.equal(weight == 0, ~keep), name  # zero exactly where pruned
        if pattern is None:
            assert int((~keep).sum()) == keep.numel() // 2, name
        else:
            assert (keep.view(keep.shape[0], -1, 4).sum(-1) == 2).all(), name
    before = dict(dense.named_parameters())
    for name, parameter in model.named_parameters():  # embeddings, norms, lm_head
        if name not in masks:
            assert torch.equal(parameter, before[name]), name


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_calibration_error_of_the_first_layer_sparsegpt_below_wanda_below_magnitude(dense, ids, pattern):
    inputs = linear_inputs(dense, ids, layer=0)
    errors = {}
    for method in METHODS:
        model, _ = pruned_copy(dense, ids, method, pattern=pattern)
        with torch.no_grad():
            errors[method] = sum(
                float((x @ (dense.get_parameter(name) - model.get_parameter(name)).T).pow(2).sum())
                for name, x in inputs.items()
            )
    assert errors["sparsegpt"] <= errors["wanda"] <= errors["magnitude"], errors


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_padding_is_left_out_of_the_statistics(dense, method):
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(3))
    padded, attention = ids.clone(), torch.ones_like(ids)
    padded[2:, 8:], attention[2:, 8:] = 0, 0  # right padding: rows 2 and 3 have 8 real tokens
    with_padding = [{"input_ids": padded, "attention_mask": attention}]
    without = [{"input_ids": ids[:2]}, {"input_ids": ids[2:, :8]}]
    _, masks = pruned_copy(dense, with_padding, method)
    _, expected = pruned_copy(dense, without, method)
    assert all(torch.equal(masks[name], expected[name]) for name in NAMES)
    _, counted = pruned_copy(dense, [{"input_ids": padded}], method)  # the padded positions taken as tokens
    assert not all(torch.equal(masks[name], counted[name]) for name in NAMES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="obs"), "method must be one of 'wanda', 'sparsegpt', 'magnitude'; got 'obs'"),
        (dict(sparsity=1.0), r"sparsity must be in \[0, 1\)"),
        (dict(sparsity=-0.1), r"sparsity must be in \[0, 1\)"),
        (dict(pattern="2-4"), "pattern must be 'unstructured' or 'N:M'"),
        (dict(pattern="4:2"), "pattern must be 'unstructured' or 'N:M'"),
        (dict(pattern="2:4", sparsity=0.6), "sparsity=0.6 contradicts pattern='2:4'.*set it to 0.5"),
        (dict(pattern="2:3"), "model.layers.0.self_attn.q_proj has in_features=32, not a multiple of 3"),
        (
            dict(method="sparsegpt", pattern="2:4", block_size=6),
            "block_size must be a positive multiple of M=4",
        ),
        (dict(damp=-1.0), "damp must be >= 0"),
    ],
)
def test_bad_settings_are_refused_before_anything_changes(dense, ids, kwargs, message):
    model = copy.deepcopy(dense)
    with pytest.raises(ValueError, match=message):
        prune_oneshot(model, ids, **{"progress": False, **kwargs})
    assert all(torch.equal(p, dense.get_parameter(name)) for name, p in model.named_parameters())


def test_the_refusal_names_the_layer_whose_inputs_do_not_split_into_groups(ids):
    model = tiny_llama(intermediate_size=48)  # hidden 32 splits into groups of 32; the FFN's 48 does not
    with pytest.raises(ValueError, match="model.layers.0.mlp.down_proj has in_features=48"):
        prune_oneshot(model, ids, "magnitude", pattern="1:32", progress=False)


def test_a_sparsity_agreeing_with_the_pattern_is_accepted(dense, ids):
    _, masks = pruned_copy(dense, ids, "wanda", pattern="1:4", sparsity=0.75)
    assert all(int(keep.sum()) * 4 == keep.numel() for keep in masks.values())


@pytest.mark.parametrize("method", METHODS)
def test_logits_change_but_stay_finite_and_training_modes_come_back(dense, ids, method):
    model = copy.deepcopy(dense).train()
    model.model.layers[1].eval()  # a mixed state is restored module by module
    modes = {name: module.training for name, module in model.named_modules()}
    with torch.no_grad():
        before = dense(input_ids=ids[:4]).logits
    prune_oneshot(model, ids, method, progress=False)
    assert {name: module.training for name, module in model.named_modules()} == modes
    with torch.no_grad():
        after = model.eval()(input_ids=ids[:4]).logits
    assert torch.isfinite(after).all() and not torch.allclose(after, before)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bfloat16_weights_stay_bfloat16(dense, ids, method):
    model, masks = pruned_copy(copy.deepcopy(dense).bfloat16(), ids, method)
    for name, keep in masks.items():
        weight = model.get_parameter(name)
        assert weight.dtype == torch.bfloat16 and torch.equal(weight == 0, ~keep), name
        assert int((~keep).sum()) == keep.numel() // 2


def reference_fasterprune(weight, hessian, n, m, block_size, damp=0.01):
    """The N:M branch of IST-DASLab/sparsegpt's ``fasterprune``, transcribed line by line (float64)."""
    W, H = weight.double().clone(), hessian.double().clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H[range(columns), range(columns)] += damp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        mask1 = torch.zeros_like(W1) == 1
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if i % m == 0:
                tmp = W1[:, i : i + m] ** 2 / (torch.diag(Hinv1)[i : i + m].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def test_sparsegpt_matches_the_reference_over_several_blocks():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(400, 48, generator=generator) * torch.randn(48, generator=generator).exp()
    inputs[:, 5] = 0  # a dead input
    weight = torch.randn(12, 48, generator=generator)
    hessian = Hessian(48)
    hessian.add(inputs)
    new, keep = sparsegpt_prune(weight, hessian.value(), 0.5, nm=(2, 4), block_size=16)
    torch.testing.assert_close(
        new.double(), reference_fasterprune(weight, hessian.value(), 2, 4, 16), rtol=1e-4, atol=1e-5
    )
    assert torch.equal(new == 0, ~keep)

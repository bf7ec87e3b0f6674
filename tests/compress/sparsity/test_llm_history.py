"""Decoder pruning histories (`compress.sparsity.llm.history`, `.rounds`) and the layout dispatch
(`compress.sparsity.layouts`): replay and restore, entries that do not fit, counts, and unknown layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from compress.sparsity.layouts import restore_pruning_history, structured_pruner
from compress.sparsity.llm.history import (
    DecoderStructure,
    applied_decoder_history,
    decoder_structure,
    original_decoder_structure,
    replay_decoder_history,
    restore_decoder_history,
)
from compress.sparsity.llm.rounds import decoder_removal_counts, plan_decoder_round


def llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=3, head_dim=8)
    ).eval()  # fmt: skip


GROUP = {"head_unit": "groups", "heads": [[2, 3], [0, 1]], "channels": [[0, 1], [5, 6]]}
WITHIN = {"head_unit": "heads", "heads": [[0, 3], [1, 2]], "channels": [[], []]}  # after GROUP: 2 groups


def test_a_replayed_history_rebuilds_the_shapes_and_the_original_is_known():
    model = replay_decoder_history(llama(), [GROUP, WITHIN])
    assert decoder_structure(model) == DecoderStructure(groups=2, heads_per_group=1, channels=62)
    assert original_decoder_structure(model) == DecoderStructure(groups=3, heads_per_group=2, channels=64)
    assert applied_decoder_history(model) == [GROUP, WITHIN]
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (2, 2, 62)
    fresh = restore_decoder_history(llama(seed=1), [GROUP, WITHIN])
    fresh.load_state_dict(model.state_dict())  # same shapes
    restore_decoder_history(model, [GROUP, WITHIN])  # already there: nothing replayed
    assert applied_decoder_history(model) == [GROUP, WITHIN]


def test_the_kept_units_are_the_ones_not_listed():
    model, dense = llama(), llama()
    replay_decoder_history(model, [GROUP])
    # layer 0 lost group 1 (query heads 2, 3): its key rows are groups 0 and 2 of the dense layer
    keys = dense.model.layers[0].self_attn.k_proj.weight
    assert torch.equal(model.model.layers[0].self_attn.k_proj.weight, torch.cat([keys[:8], keys[16:]]))
    down = dense.model.layers[1].mlp.down_proj.weight
    assert torch.equal(
        model.model.layers[1].mlp.down_proj.weight, down[:, [i for i in range(64) if i not in (5, 6)]]
    )


@pytest.mark.parametrize(
    "entry",
    [
        {"layer": 0, "heads": [0], "channels": [1]},  # an encoder entry
        {"head_unit": "groups", "heads": [[0], [0]], "channels": [[], []]},  # half a group
        {"head_unit": "heads", "heads": [[0, 1], [0, 1]], "channels": [[], []]},  # a whole group
        {"head_unit": "groups", "heads": [[], []], "channels": [[1], []]},  # uneven widths
        {"head_unit": "groups", "heads": [[], []], "channels": [[64], [64]]},  # out of range
        {"head_unit": "groups", "heads": [[]], "channels": [[]]},  # one layer of two
    ],
)
def test_entries_that_do_not_fit_are_refused(entry):
    model = llama()
    with pytest.raises(
        ValueError, match=r"history: .* does not fit this model's 2 layers of 3 key/value groups"
    ):
        replay_decoder_history(model, [entry])
    assert applied_decoder_history(model) == [] and model.config.num_attention_heads == 6


def test_a_model_pruned_differently_is_refused():
    model = replay_decoder_history(llama(), [{**WITHIN, "heads": [[0, 2, 4], [1, 3, 5]]}])
    with pytest.raises(ValueError, match="history: this model has 1 removals that the saved history"):
        restore_decoder_history(model, [GROUP])


def test_counts_are_cumulative_shares_of_the_original():
    original = DecoderStructure(groups=3, heads_per_group=2, channels=64)
    now = DecoderStructure(groups=2, heads_per_group=2, channels=48)
    assert decoder_removal_counts(now, 2 / 3, 0.5, "groups", original) == (1, 16)
    assert decoder_removal_counts(now, 1 / 3, 0.25, "groups", original) == (0, 0)  # already gone
    assert decoder_removal_counts(original, 0.5, 0.0, "heads") == (1, 0)


def test_a_round_needs_a_dict_batch_of_input_ids():
    with pytest.raises(TypeError, match=r"batch: activation importance .* got tuple"):
        plan_decoder_round(llama(), 0.5, 0.0, "groups", (torch.zeros(2, 4, dtype=torch.long),))
    assert plan_decoder_round(llama(), 0.2, 0.0, "groups", {}) == []  # nothing to remove: no forward


def test_an_unknown_layout_is_refused_with_both_layouts_named():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(
        ValueError, match="GPT2LMHeadModel is neither a BERT-style encoder .* nor a Llama-family"
    ):
        structured_pruner(gpt2)


def test_restore_finds_the_decoder_inside_a_module():
    holder = nn.ModuleDict({"student": replay_decoder_history(llama(), [GROUP])})
    fresh = nn.ModuleDict({"student": llama(seed=2)})
    restore_pruning_history(fresh, applied_decoder_history(holder["student"]))
    fresh.load_state_dict(holder.state_dict())
    assert fresh["student"].config.num_key_value_heads == 2

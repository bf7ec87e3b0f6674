"""`prune_llm` and its parts on tiny random Llama-family models: shapes, configs, stock reload, importance."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from compress.sparsity.llm.decoder import decoder_of
from compress.sparsity.llm.importance import llm_importance
from compress.sparsity.llm.prune import prune_llm

SHAPE = dict(
    vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=6, num_attention_heads=6,
    num_key_value_heads=3, head_dim=8, max_position_embeddings=64,
)  # fmt: skip
FAMILIES = {
    "llama-tied": (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=True)),
    "llama": (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=False)),
    "mistral": (MistralForCausalLM, MistralConfig, {}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),  # biases on q/k/v
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {}),  # q_norm / k_norm per head
}


def build(family: str = "llama-tied", seed: int = 0):
    model_class, config_class, extra = FAMILIES[family]
    torch.manual_seed(seed)
    return model_class(config_class(**SHAPE, **extra)).eval()


def ids(rows: int = 8, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 96, (rows, length), generator=torch.Generator().manual_seed(seed))


def logits(model, tokens: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids(3, 10, seed=5) if tokens is None else tokens).logits


def prune(model, **settings):
    return prune_llm(model, ids(), progress=False, **settings)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_kind_of_pruning_gives_a_stock_model_that_reloads_with_the_same_logits(family, tmp_path):
    model = prune(build(family), remove_layers=2, ffn_ratio=0.5, head_ratio=1 / 3, hidden_ratio=1 / 3)
    config = model.config
    assert (config.num_hidden_layers, config.intermediate_size) == (4, 32)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size) == (
        4, 2, 8, 32,
    )  # fmt: skip
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (32, 32) and layer.self_attn.k_proj.weight.shape == (16, 32)
    assert layer.mlp.down_proj.weight.shape == (32, 32) and model.model.embed_tokens.weight.shape == (96, 32)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=1e-6)


def test_tied_output_embeddings_stay_tied_after_hidden_pruning():
    model = prune(build("llama-tied"), hidden_ratio=0.25)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.shape == (96, 36)


def _make_identity(layer) -> None:
    """Zero the writes into the residual stream: the block returns its input."""
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("blocks", ["influence", "skip_kl"])
def test_depth_pruning_removes_the_blocks_that_change_nothing_and_keeps_the_function(blocks):
    model = build()
    for index in (1, 4):
        _make_identity(model.model.layers[index])
    kept_modules = [model.model.layers[i] for i in (0, 2, 3, 5)]
    before = logits(model)
    scores = llm_importance(model, ids(), blocks=blocks)
    assert scores.blocks[1] == pytest.approx(0, abs=1e-6) and scores.blocks[4] == pytest.approx(0, abs=1e-6)
    assert bool((scores.blocks[[0, 2, 3, 5]] > 1e-3).all())
    prune(model, remove_layers=2, block_importance=blocks)
    assert list(model.model.layers) == kept_modules
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    torch.testing.assert_close(logits(model), before, rtol=0, atol=1e-5)


def test_explicit_layers_are_removed_and_generation_with_the_kv_cache_still_works():
    model = build()
    kept_modules = [model.model.layers[i] for i in (1, 2, 4, 5)]
    prune(model, layers=[3, 0])
    assert list(model.model.layers) == kept_modules
    prompt = ids(1, 5, seed=9)
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_ffn_pruning_removes_dead_channels_first_and_keeps_the_function():
    model = build()
    dead = torch.arange(0, 64, 2)  # half the channels write nothing
    for layer in model.model.layers:
        with torch.no_grad():
            layer.mlp.up_proj.weight[dead] = 0
    before = logits(model)
    prune(model, ffn_ratio=0.5)
    torch.testing.assert_close(logits(model), before, rtol=0, atol=1e-5)
    assert model.config.intermediate_size == 32


def test_group_pruning_removes_a_silent_key_value_group_with_its_query_heads():
    model = build()
    for layer in model.model.layers:
        with torch.no_grad():
            layer.self_attn.v_proj.weight[8:16] = 0  # kv group 1 (queries 2, 3) outputs zeros
    before = logits(model)
    scores = llm_importance(model, ids())
    assert int(scores.groups(0, 3).argmin()) == 1
    prune(model, head_ratio=1 / 3)
    torch.testing.assert_close(logits(model), before, rtol=0, atol=1e-5)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)


def test_head_pruning_within_groups_removes_the_weakest_query_head_of_every_group():
    model = build("qwen2")  # six query heads in three groups of two; q has a bias to slice
    scores = llm_importance(model, ids())
    reference = build("qwen2")
    for index, layer in enumerate(reference.model.layers):
        weakest = scores.heads[index].view(3, 2).argmin(dim=1) + torch.arange(3) * 2
        with torch.no_grad():  # a query head whose output is dropped contributes nothing
            for head in weakest.tolist():
                layer.self_attn.o_proj.weight[:, head * 8 : (head + 1) * 8] = 0
    prune(model, head_ratio=0.5, head_unit="heads")
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (3, 3)
    assert model.model.layers[0].self_attn.q_proj.bias.shape == (24,)
    assert model.model.layers[0].self_attn.num_key_value_groups == 1
    torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=1e-5)


def test_hidden_importance_ranks_a_channel_that_every_norm_silences_last():
    model = build("mistral")  # no rule that hidden_size divides by the head count
    with torch.no_grad():
        for norm in decoder_of(model).norms():
            norm.weight[7] = 0
    scores = llm_importance(model, ids())
    assert int(scores.hidden.argmin()) == 7
    prune(model, hidden_ratio=1 / 48)
    assert model.config.hidden_size == 47


def test_padding_does_not_change_the_importance():
    model = build()
    tokens = ids(4, 10)
    padded = {
        "input_ids": torch.cat([tokens, torch.zeros(4, 3, dtype=torch.long)], dim=1),
        "attention_mask": torch.cat([torch.ones(4, 10), torch.zeros(4, 3)], dim=1).long(),
    }
    plain, with_padding = llm_importance(model, tokens), llm_importance(model, [padded])
    torch.testing.assert_close(with_padding.blocks, plain.blocks, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(with_padding.hidden, plain.hidden, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(with_padding.ffn[2], plain.ffn[2], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(with_padding.heads[3], plain.heads[3], rtol=1e-4, atol=1e-6)


def test_the_training_flag_is_restored():
    model = build().train()
    prune(model, ffn_ratio=0.25)
    assert model.training


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(ffn_ratio=1.0), "ffn_ratio must be in"),
        (dict(head_ratio=-0.1), "head_ratio must be in"),
        (dict(head_ratio=0.1), "removes none of the 3 key/value groups"),
        (dict(head_ratio=0.9), "would remove all 3 key/value groups"),
        (dict(hidden_ratio=0.001), "a ratio above 0.0104 removes one"),
        (dict(remove_layers=6), "remove_layers must be in"),
        (dict(layers=[0, 9]), "distinct indices in"),
        (dict(layers=[1], remove_layers=1), "not both"),
        (dict(head_unit="query"), "head_unit must be"),
        (dict(hidden_ratio=1 / 48), "not a valid LlamaConfig"),  # 47 hidden channels, 6 heads
        (dict(block_importance="cos"), "blocks must be"),
    ],
)
def test_bad_settings_are_refused_before_anything_changes(settings, message):
    model = build()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        prune(model, **settings)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_model_that_is_not_a_llama_family_decoder_is_refused():
    bert = BertModel(BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(TypeError, match="Llama-family causal LM"):
        prune(bert, ffn_ratio=0.5)


def test_a_model_with_lora_adapters_is_refused():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build(), LoraConfig(target_modules=["q_proj"])).base_model.model
    with pytest.raises(ValueError, match="without adapters"):
        prune(model, ffn_ratio=0.5)


@pytest.mark.parametrize("calibration", ["text", [{"ids": 1}], torch.rand(2, 3)])
def test_bad_calibration_data_is_refused_with_what_is_expected(calibration):
    with pytest.raises((TypeError, ValueError), match="calibration|Each calibration batch"):
        prune_llm(build(), calibration, ffn_ratio=0.5, progress=False)

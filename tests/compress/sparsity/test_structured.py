import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from compress.sparsity.structured import (
    Structure,
    applied_history,
    check_stock_loadable,
    find_prunable_model,
    original_structure,
    plan_pruning,
    prune_structured,
    replay_history,
    restore_history,
    structure_of,
)

HIDDEN, HEADS, FFN = 32, 4, 64
HEAD_SIZE = HIDDEN // HEADS


def bert(layers: int = 2, seed: int = 0, vocab: int = 100) -> BertForSequenceClassification:
    """A tiny 4-head BERT without dropout (each call builds its own config: pruning edits the config)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval()


def batch(size: int = 3, length: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    """Token ids with right padding of different lengths per row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (size, length), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(size):
        mask[row, max(1, length - row * 2) :] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_removed_units(model: BertForSequenceClassification, history: list[dict]) -> None:
    """What pruning must equal: the removed heads' and channels' contributions set to zero (one round)."""
    with torch.no_grad():
        for entry in history:
            layer = model.bert.encoder.layer[entry["layer"]]
            for head in entry["heads"]:
                layer.attention.output.dense.weight[:, head * HEAD_SIZE : (head + 1) * HEAD_SIZE] = 0
            layer.output.dense.weight[:, entry["channels"]] = 0


def test_heads_and_channels_are_removed_in_every_layer():
    model = bert(layers=3)
    before = params(model)
    history = prune_structured(model, head_ratio=0.5, ffn_ratio=0.5)
    assert structure_of(model).heads == [2, 2, 2] and structure_of(model).channels == [32, 32, 32]
    assert model.config.num_attention_heads == 2 and model.config.intermediate_size == 32
    assert model.config.hidden_size == HIDDEN
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        assert (attention.num_attention_heads, attention.attention_head_size, attention.all_head_size) == (
            2,
            8,
            16,
        )
        assert [attention.query.out_features, attention.key.out_features, attention.value.out_features] == [
            16
        ] * 3
        assert (
            layer.attention.output.dense.in_features == 16 and layer.attention.output.dense.out_features == 32
        )
        assert layer.intermediate.dense.out_features == 32 and layer.output.dense.in_features == 32
    dims, channels = 2 * HEAD_SIZE, 32  # removed per layer
    per_layer = 3 * dims * (HIDDEN + 1) + dims * HIDDEN + channels * (HIDDEN + 1) + channels * HIDDEN
    assert before - params(model) == 3 * per_layer
    assert [(e["layer"], len(e["heads"]), len(e["channels"])) for e in history] == [
        (i, 2, 32) for i in range(3)
    ]
    assert json.loads(json.dumps(history)) == history  # plain data: JSON and weights_only-safe


@pytest.mark.parametrize("size, length", [(1, 1), (2, 5), (5, 16)])
def test_pruned_model_equals_the_dense_one_with_those_units_zeroed(size, length):
    dense = bert()
    pruned = bert()
    history = prune_structured(pruned, head_ratio=0.5, ffn_ratio=0.25)
    zero_removed_units(dense, history)
    inputs = batch(size, length)
    assert logits(pruned, inputs).shape == (size, 3)
    torch.testing.assert_close(logits(pruned, inputs), logits(dense, inputs), atol=1e-5, rtol=1e-5)


def test_least_important_head_goes_first():
    for importance in ("magnitude", "taylor"):
        model = bert()
        layer = model.bert.encoder.layer[0]
        with torch.no_grad():  # head 2 of layer 0 computes nothing
            for linear in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                linear.weight[2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0
                linear.bias[2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0
            layer.attention.output.dense.weight[:, 2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0
        labelled = {**batch(4, 8), "labels": torch.tensor([0, 1, 2, 1])}
        history = prune_structured(model, head_ratio=0.25, importance=importance, batch=labelled)
        assert history[0]["layer"] == 0 and history[0]["heads"] == [2], importance


def test_taylor_needs_labels():
    with pytest.raises(ValueError, match=r"batch: importance='taylor' needs .* `labels`"):
        prune_structured(bert(), head_ratio=0.5, importance="taylor", batch=batch())


def test_replay_rebuilds_the_shapes_and_the_saved_weights_fit():
    pruned = bert(layers=3)
    history = prune_structured(pruned, head_ratio=0.25, ffn_ratio=0.25)
    history += prune_structured(pruned, head_ratio=0.5, ffn_ratio=0.5, uniform_per_layer=False)
    reloaded = json.loads(json.dumps(history))
    fresh = replay_history(bert(layers=3, seed=5), reloaded)
    assert structure_of(fresh) == structure_of(pruned)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in pruned.state_dict().items()
    }
    fresh.load_state_dict(pruned.state_dict())
    inputs = batch(4, 12)
    torch.testing.assert_close(logits(fresh, inputs), logits(pruned, inputs), atol=0, rtol=0)


def test_restore_replays_only_what_the_model_lacks():
    pruned = bert(layers=3)
    history = prune_structured(pruned, head_ratio=0.25) + prune_structured(pruned, ffn_ratio=0.5)
    assert applied_history(pruned) == history
    assert original_structure(pruned) == Structure([4, 4, 4], [64, 64, 64])
    assert restore_history(pruned, history) is pruned and applied_history(pruned) == history  # nothing to do
    half_way = replay_history(bert(layers=3), history[:3])
    restore_history(half_way, history)
    assert structure_of(half_way) == structure_of(pruned) and applied_history(half_way) == history
    with pytest.raises(ValueError, match=r"history: .* entries\) does not start with"):
        restore_history(pruned, history[3:])
    with pytest.raises(ValueError, match=r"history: .* does not fit this model"):
        replay_history(bert(layers=3), [{"layer": 0, "heads": [0, 1, 2, 3], "channels": []}])


def test_global_ranking_removes_the_total_share():
    model = bert(layers=3)
    prune_structured(model, head_ratio=0.5, ffn_ratio=0.5, uniform_per_layer=False)
    structure = structure_of(model)
    assert sum(structure.heads) == 6 and sum(structure.channels) == 96
    assert min(structure.heads) >= 1 and min(structure.channels) >= 1
    assert (
        model.classifier.in_features == HIDDEN
        and model.bert.embeddings.word_embeddings.embedding_dim == HIDDEN
    )
    ffn_only = bert(layers=3)
    prune_structured(ffn_only, ffn_ratio=0.5, uniform_per_layer=False)
    widths = structure_of(ffn_only).channels
    assert sum(widths) == 96 and widths != [32, 32, 32]  # this seed gives uneven widths
    assert ffn_only.config.intermediate_size == FFN  # no single value describes them
    with pytest.raises(ValueError, match="FFN widths differ per layer"):
        check_stock_loadable(ffn_only)


def test_ffn_pruned_model_round_trips_through_a_stock_folder(tmp_path):
    model = bert()
    prune_structured(model, ffn_ratio=0.5)
    check_stock_loadable(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is BertForSequenceClassification and loaded.config.intermediate_size == 32
    inputs = batch(3, 10)
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=1e-5, rtol=0)


def test_head_pruned_model_is_not_stock_loadable():
    model = bert()
    prune_structured(model, head_ratio=0.5)
    with pytest.raises(ValueError, match=r"no `pruned_heads`.*torch\.onnx\.export or torch\.export"):
        check_stock_loadable(model)


class Holder(nn.Module):
    """Like a DistillationModule: the student as ``model``, frozen teachers beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.model = bert(seed=1)
        self.teachers = nn.ModuleList([bert(seed=2).requires_grad_(False)])


def test_only_the_student_is_pruned_never_the_teacher_or_the_head():
    holder = Holder()
    teacher = {k: v.clone() for k, v in holder.teachers.state_dict().items()}
    kept = {
        k: v.clone()
        for k, v in holder.model.state_dict().items()
        if k.startswith(("classifier.", "bert.embeddings.", "bert.pooler."))
    }
    assert find_prunable_model(holder) is holder.model
    prune_structured(holder, head_ratio=0.5, ffn_ratio=0.5)
    assert structure_of(holder.model).heads == [2, 2]
    assert (
        structure_of(holder.teachers[0]).heads == [4, 4]
        and holder.teachers[0].config.num_attention_heads == 4
    )
    assert all(torch.equal(v, holder.teachers.state_dict()[k]) for k, v in teacher.items())
    assert all(torch.equal(v, holder.model.state_dict()[k]) for k, v in kept.items())


def test_which_model_is_ambiguous_or_missing():
    holder = Holder()
    holder.other = bert()
    with pytest.raises(ValueError, match=r"module: expected one Hugging Face model .* \['model', 'other'\]"):
        find_prunable_model(holder)
    assert find_prunable_model(holder, "other") is holder.other
    with pytest.raises(ValueError, match="expected one Hugging Face model .* found none"):
        prune_structured(nn.Sequential(nn.Linear(4, 4)), ffn_ratio=0.5)
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    other_layout = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=4)
    )
    with pytest.raises(ValueError, match="has no prunable BERT-style layers"):
        prune_structured(other_layout, ffn_ratio=0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(head_ratio=1.0), r"head_ratio: 1.0 must be in \[0, 1\)"),
        (dict(ffn_ratio=-0.1), r"ffn_ratio: -0.1 must be in \[0, 1\)"),
        (dict(head_ratio="0.5"), r"head_ratio: '0.5' must be in \[0, 1\)"),
        (dict(head_ratio=0.2), r"head_ratio=0.2 and ffn_ratio=0.0 remove nothing .* heads \[4, 4\]"),
        (dict(ffn_ratio=0.5, importance="random"), r"importance: 'random' must be one of"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune_structured(bert(), **kwargs)


def test_training_mode_and_frozen_parameters_are_kept():
    model = bert().train()
    model.bert.embeddings.requires_grad_(False)
    prune_structured(model, head_ratio=0.5, ffn_ratio=0.5)  # torch-pruning's tracing switches to eval
    assert all(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if "embeddings" not in n)


def lora_model(seed: int = 0, random_b: bool = True) -> nn.Module:
    config = LoraConfig(r=4, target_modules=["query", "value", "dense"], init_lora_weights=not random_b)
    return get_peft_model(bert(seed=seed), config).eval()


def test_lora_is_merged_then_restarts_from_zero_on_the_pruned_shapes():
    model = lora_model()
    inputs = batch(3, 7)
    before = logits(model, inputs)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    history = plan_pruning(model, head_ratio=0.5, ffn_ratio=0.5)  # merges the adapters into the base
    torch.testing.assert_close(logits(model, inputs), before, atol=1e-6, rtol=0)
    replay_history(model, history)
    layer = model.base_model.model.bert.encoder.layer[0]
    query, ffn_out = layer.attention.self.query, layer.output.dense
    assert not query.merged and query.out_features == 16 and query.lora_B["default"].out_features == 16
    assert ffn_out.in_features == 32 and ffn_out.lora_A["default"].in_features == 32
    assert all(not b.weight.any() for m in model.modules() if hasattr(m, "lora_B") for b in m.lora_B.values())
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == trainable
    model(**inputs).logits.sum().backward()  # the adapters train on
    assert query.lora_B["default"].weight.grad.abs().sum() > 0
    fresh = replay_history(lora_model(seed=3, random_b=False), json.loads(json.dumps(history)))
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(logits(fresh, inputs), logits(model, inputs), atol=0, rtol=0)


def test_lora_pruning_equals_pruning_the_merged_model():
    merged = lora_model().merge_and_unload()
    with_lora = lora_model()
    inputs = batch(2, 6)
    history = prune_structured(with_lora, head_ratio=0.5, ffn_ratio=0.25)
    assert prune_structured(merged, head_ratio=0.5, ffn_ratio=0.25) == history
    torch.testing.assert_close(logits(with_lora, inputs), logits(merged, inputs), atol=1e-5, rtol=0)


def test_other_adapters_are_refused():
    from peft import IA3Config

    model = get_peft_model(bert(), IA3Config(target_modules=["query", "value"], feedforward_modules=[]))
    with pytest.raises(ValueError, match=r"peft\.tuners\.ia3.*cannot be pruned structurally"):
        prune_structured(model, head_ratio=0.5)

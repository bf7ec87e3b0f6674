import pytest
import torch
from safetensors.torch import load_file
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from compress.peft.bottleneck import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BottleneckAdapter,
    BottleneckConfig,
    add_bottleneck_adapters,
    bottleneck_adapters,
    load_bottleneck_adapters,
    remove_bottleneck_adapters,
    save_bottleneck_adapters,
)
from tests.conftest import tiny_bert

HIDDEN, LAYERS, REDUCTION, LABELS = 32, 4, 4, 2


def batch(seed: int = 1, size: int = 4, length: int = 8, vocab: int = 30522):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (size, length), generator=generator)
    labels = torch.randint(0, LABELS, (size,), generator=generator)
    return ids, labels


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def train_step(model, ids, labels, steps: int = 1) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_zero_init_keeps_logits(placement):
    model = tiny_bert(layers=LAYERS).eval()
    ids, _ = batch()
    before = logits(model, ids)
    add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=REDUCTION, placement=placement))
    assert torch.equal(before, logits(model, ids))


@pytest.mark.parametrize(("placement", "per_layer"), [("houlsby", 2), ("pfeiffer", 1)])
def test_adapter_and_trainable_counts(placement, per_layer):
    model = tiny_bert(layers=LAYERS)
    add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=REDUCTION, placement=placement))
    adapters = bottleneck_adapters(model)
    assert len(adapters) == per_layer * LAYERS
    assert all(n.endswith(".output.dense.adapter") for n in adapters)
    assert sum(".attention." in n for n in adapters) == (LAYERS if placement == "houlsby" else 0)
    bottleneck = HIDDEN // REDUCTION
    per_adapter = (HIDDEN * bottleneck + bottleneck) + (bottleneck * HIDDEN + HIDDEN)
    head = HIDDEN * LABELS + LABELS
    assert sum(p.numel() for p in trainable(model).values()) == per_layer * LAYERS * per_adapter + head


def test_only_adapters_and_head_train_and_adapters_are_live():
    model = tiny_bert(layers=LAYERS).eval()  # eval: no dropout, so logits compare exactly
    ids, labels = batch()
    base_logits = logits(model, ids)
    add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=REDUCTION, placement="houlsby"))
    names = trainable(model)
    assert names and all(".adapter." in n or n.startswith("classifier.") for n in names)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if n not in names}
    adapters_before = {n: p.detach().clone() for n, p in names.items() if ".adapter." in n}
    head_before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    train_step(model, ids, labels)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], value) for n, value in base_before.items())
    assert not torch.equal(
        after["bert.encoder.layer.0.output.dense.adapter.up.weight"],
        adapters_before["bert.encoder.layer.0.output.dense.adapter.up.weight"],
    )
    # the adapters alone change the output: with the head put back, logits still differ from the base's
    with torch.no_grad():
        model.classifier.load_state_dict(head_before)
    assert not torch.allclose(logits(model, ids), base_logits)


def test_base_state_dict_keys_are_unchanged():
    model = tiny_bert(layers=2)
    base_keys = set(model.state_dict())
    add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=REDUCTION, placement="houlsby"))
    keys = set(model.state_dict())
    assert base_keys <= keys
    assert all(".adapter." in k for k in keys - base_keys)


def test_save_load_round_trip(tmp_path):
    model = tiny_bert(layers=LAYERS, seed=3).eval()
    ids, labels = batch()
    config = BottleneckConfig(reduction_factor=REDUCTION, placement="houlsby", non_linearity="gelu")
    add_bottleneck_adapters(model, config)
    train_step(model, ids, labels)
    folder = tmp_path / "adapters"
    save_bottleneck_adapters(model, folder)

    saved = load_file(str(folder / WEIGHTS_FILE))
    assert set(saved) == {n for n in model.state_dict() if ".adapter." in n} | {
        "classifier.weight",
        "classifier.bias",
    }
    assert "bert.encoder.layer.0.attention.output.dense.adapter.down.weight" in saved
    assert not any(n.endswith("dense.weight") for n in saved)  # no base weights
    full = sum(t.numel() for t in tiny_bert(layers=LAYERS).state_dict().values())
    assert sum(t.numel() for t in saved.values()) * 100 < full

    fresh = load_bottleneck_adapters(tiny_bert(layers=LAYERS, seed=3).eval(), folder)
    assert fresh.bottleneck_config == config
    assert torch.allclose(logits(fresh, ids), logits(model, ids), atol=1e-6, rtol=0)
    assert set(trainable(fresh)) == set(trainable(model))


def test_save_refuses_non_empty_folder_unless_overwrite(tmp_path):
    model = add_bottleneck_adapters(tiny_bert(layers=2), BottleneckConfig(reduction_factor=REDUCTION))
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="overwrite"):
        save_bottleneck_adapters(model, tmp_path)
    save_bottleneck_adapters(model, tmp_path, overwrite=True)
    assert (tmp_path / CONFIG_FILE).is_file() and (tmp_path / WEIGHTS_FILE).is_file()


def test_load_rejects_mismatched_weights(tmp_path):
    model = add_bottleneck_adapters(tiny_bert(layers=2), BottleneckConfig(reduction_factor=REDUCTION))
    save_bottleneck_adapters(model, tmp_path)
    with pytest.raises(ValueError, match="missing"):
        load_bottleneck_adapters(tiny_bert(layers=3), tmp_path)  # a third layer's adapter is missing


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"placement": "x"}, "BottleneckConfig.placement"),
        ({"reduction_factor": 0}, "BottleneckConfig.reduction_factor"),
        ({"non_linearity": "softplus"}, "BottleneckConfig.non_linearity"),
        ({"ffn_output_pattern": "("}, "BottleneckConfig.ffn_output_pattern"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BottleneckConfig(**kwargs)


@pytest.mark.parametrize(
    ("placement", "field"),
    [("pfeiffer", "ffn_output_pattern"), ("houlsby", "attention_output_pattern")],
)
def test_pattern_matching_nothing_names_the_field(placement, field):
    config = BottleneckConfig(placement=placement, **{field: r".*\.nowhere"})
    with pytest.raises(ValueError, match=f"BottleneckConfig.{field}"):
        add_bottleneck_adapters(tiny_bert(layers=2), config)


def test_adding_twice_and_wrong_config_type():
    model = add_bottleneck_adapters(tiny_bert(layers=2), BottleneckConfig(reduction_factor=REDUCTION))
    with pytest.raises(ValueError, match="already has bottleneck adapters"):
        add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=REDUCTION))
    with pytest.raises(TypeError, match="BottleneckConfig"):
        add_bottleneck_adapters(tiny_bert(layers=2), {"reduction_factor": 4})


def test_reduction_larger_than_hidden_is_rejected_without_changing_the_model():
    model = tiny_bert(layers=2)
    with pytest.raises(ValueError, match="reduction_factor"):
        add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=HIDDEN + 1))
    assert not bottleneck_adapters(model) and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("placement", "pattern_kwargs", "per_layer"),
    [
        ("pfeiffer", {"ffn_output_pattern": r".*\.ffn\.lin2"}, 1),
        (
            "houlsby",
            {"ffn_output_pattern": r".*\.ffn\.lin2", "attention_output_pattern": r".*\.attention\.out_lin"},
            2,
        ),
    ],
)
def test_other_architecture_by_pattern(placement, pattern_kwargs, per_layer):
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    model = DistilBertForSequenceClassification(config).eval()
    ids, _ = batch(vocab=100)
    before = logits(model, ids)
    bottleneck = BottleneckConfig(reduction_factor=REDUCTION, placement=placement, **pattern_kwargs)
    add_bottleneck_adapters(model, bottleneck)
    assert len(bottleneck_adapters(model)) == per_layer * 2
    assert torch.equal(before, logits(model, ids))
    names = trainable(model)
    assert sum(p.numel() for p in names.values()) > 0
    assert any(n.startswith("pre_classifier.") for n in names)  # DistilBERT's head has two layers


def test_gradient_reaches_first_layer_adapter():
    model = tiny_bert(layers=LAYERS, dropout=0.0)
    add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=REDUCTION, placement="houlsby"))
    ids, labels = batch()
    down = model.get_submodule("bert.encoder.layer.0.attention.output.dense.adapter.down")
    # With every up-projection at zero, no gradient reaches any down-projection; one step makes them live.
    loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
    loss.backward()
    assert torch.count_nonzero(down.weight.grad) == 0
    model.zero_grad()
    train_step(model, ids, labels)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
    assert down.weight.grad is not None and torch.count_nonzero(down.weight.grad) > 0


def test_remove_restores_base_model():
    model = tiny_bert(layers=2).eval()
    ids, labels = batch()
    base_keys, base_logits = set(model.state_dict()), logits(model, ids)
    add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=REDUCTION, train_head=False))
    train_step(model, ids, labels)
    assert not torch.equal(logits(model, ids), base_logits)
    remove_bottleneck_adapters(model)
    assert not bottleneck_adapters(model) and not any(
        isinstance(m, BottleneckAdapter) for m in model.modules()
    )
    assert set(model.state_dict()) == base_keys
    assert torch.equal(logits(model, ids), base_logits)
    add_bottleneck_adapters(model, BottleneckConfig(reduction_factor=REDUCTION))  # allowed again

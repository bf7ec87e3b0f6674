import copy

import pytest
import torch
from peft import LoraConfig

from compress.peft.adapters import attach_adapter
from compress.peft.freezers import count_trainable, train_attention_only, train_bias_only, train_only_layers
from compress.peft.layerdrop import LayerDrop, add_layerdrop, has_layerdrop, remove_layerdrop
from compress.peft.subnetwork import SubnetworkMask
from tests.conftest import tiny_bert

HEAD = {"classifier.weight", "classifier.bias"}


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def names(model, prefix: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def batch(seed: int = 0, size: int = 4, length: int = 7) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 1000, (size, length), generator=generator),
        "labels": torch.randint(0, 2, (size,), generator=generator),
    }


def test_train_only_the_last_layer_and_the_head():
    model = tiny_bert()
    assert train_only_layers(model, [-1]) is model
    assert trainable(model) == names(model, "bert.encoder.layer.3.") | HEAD


def test_train_only_layers_with_embeddings_without_head():
    model = train_only_layers(tiny_bert(), [0, -2], include_head=False, include_embeddings=True)
    expected = names(model, "bert.encoder.layer.0.") | names(model, "bert.encoder.layer.2.")
    assert trainable(model) == expected | names(model, "bert.embeddings.")


def test_freezing_leaves_buffers_alone():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.named_buffers()}
    train_only_layers(model, [1])
    assert before.keys() == dict(model.named_buffers()).keys()
    assert all(torch.equal(v, dict(model.named_buffers())[k]) for k, v in before.items())


@pytest.mark.parametrize("layers", [[4], [-5], [0, 7]])
def test_out_of_range_layers_are_refused(layers):
    with pytest.raises(ValueError, match=r"train_only_layers.layers: \[-?\d\] outside the model's 4 layers"):
        train_only_layers(tiny_bert(), layers)


def test_no_layers_are_refused():
    with pytest.raises(ValueError, match=r"train_only_layers.layers: \[\] selects nothing"):
        train_only_layers(tiny_bert(), [])


def test_attention_only_trains_the_attention_projections():
    model = train_attention_only(tiny_bert())
    expected = {
        f"bert.encoder.layer.{i}.attention.{part}.{kind}"
        for i in range(4)
        for part in ("self.query", "self.key", "self.value", "output.dense")
        for kind in ("weight", "bias")
    }
    assert trainable(model) == expected | HEAD
    assert all("attention" in n for n in trainable(model) - HEAD)
    assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" not in trainable(
        model
    )  # not a projection


def test_attention_patterns_are_a_parameter():
    model = train_attention_only(tiny_bert(), include_head=False, patterns=[r"layer\.1\.attention\.self"])
    assert trainable(model) == {
        f"bert.encoder.layer.1.attention.self.{m}.{k}"
        for m in ("query", "key", "value")
        for k in ("weight", "bias")
    }
    with pytest.raises(ValueError, match=r"train_attention_only.patterns: \('self_attn',\) match no linear"):
        train_attention_only(tiny_bert(), patterns=("self_attn",))


def test_bitfit_trains_biases_and_the_head():
    model = train_bias_only(tiny_bert())
    names_ = trainable(model)
    assert {n for n in names_ if not n.endswith("bias")} == {"classifier.weight"}
    assert names_ == {n for n, _ in model.named_parameters() if n.endswith("bias")} | HEAD
    assert all(n.endswith("bias") for n in trainable(train_bias_only(tiny_bert(), include_head=False)))


def test_count_trainable():
    model = train_only_layers(tiny_bert(), [-1], include_head=False)
    layer = sum(p.numel() for p in model.bert.encoder.layer[3].parameters())
    assert count_trainable(model) == (layer, sum(p.numel() for p in model.parameters()))


def test_functions_work_on_a_peft_model():
    model = attach_adapter(tiny_bert(), LoraConfig(r=2, target_modules=["query"]))
    model = train_only_layers(model, [-1])
    assert trainable(model) and all("encoder.layer.3." in n or ".classifier." in n for n in trainable(model))


def adamw_steps(model, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0)
    for step in range(steps):
        inputs = batch(step)
        labels = inputs.pop("labels")
        torch.nn.functional.cross_entropy(model(**inputs).logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_magnitude_subnetwork_trains_only_its_entries():
    model = tiny_bert(dropout=0.0)
    mask = SubnetworkMask.from_magnitude(model, 0.1)
    assert set(mask.masks) == {
        n for n, p in model.named_parameters() if n.startswith("bert.encoder.layer.") and p.ndim == 2
    }
    params = dict(model.named_parameters())
    for name, m in mask.masks.items():
        assert abs(int(m.sum()) - 0.1 * m.numel()) <= 1, name
        chosen, rest = params[name].detach().abs()[m], params[name].detach().abs()[~m]
        assert chosen.min() >= rest.max(), name  # the largest magnitudes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert mask.apply(model) is model
    assert trainable(model) == set(mask.masks) | HEAD
    adamw_steps(model)
    after = model.state_dict()
    for name, m in mask.masks.items():
        assert torch.equal(after[name][~m], before[name][~m]), name  # bitwise unchanged
        assert not torch.equal(after[name][m], before[name][m]), name
    assert torch.equal(
        after["bert.embeddings.word_embeddings.weight"], before["bert.embeddings.word_embeddings.weight"]
    )
    mask.remove()
    adamw_steps(model, steps=1)  # without hooks every entry of a trainable tensor moves
    name = next(iter(mask.masks))
    assert not torch.equal(model.state_dict()[name][~mask.masks[name]], before[name][~mask.masks[name]])


def test_chosen_subnetwork():
    model = tiny_bert()
    name = "bert.encoder.layer.0.output.dense.weight"
    chosen = torch.zeros_like(dict(model.named_parameters())[name], dtype=torch.bool)
    chosen[:, :3] = True
    mask = SubnetworkMask({name: chosen})
    assert mask.fractions() == {name: 3 / chosen.shape[1]}
    mask.apply(model, include_head=False)
    assert trainable(model) == {name}
    inputs = batch()
    inputs.pop("labels")
    model(**inputs).logits.sum().backward()
    grad = dict(model.named_parameters())[name].grad
    assert torch.all(grad[~chosen] == 0) and torch.any(grad[chosen] != 0)
    with pytest.raises(RuntimeError, match="already applied"):
        mask.apply(model)


def test_full_fraction_and_patterns():
    model = tiny_bert()
    mask = SubnetworkMask.from_magnitude(model, 1.0, patterns=[r"classifier\.weight"])
    assert list(mask.masks) == ["classifier.weight"] and bool(mask.masks["classifier.weight"].all())


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_bad_fraction_is_refused(fraction):
    with pytest.raises(
        ValueError, match=rf"SubnetworkMask.from_magnitude.fraction: {fraction} must be in \(0, 1\]"
    ):
        SubnetworkMask.from_magnitude(tiny_bert(), fraction)


def test_bad_masks_are_refused():
    with pytest.raises(ValueError, match=r"SubnetworkMask.masks\['w'\]: torch.float32 is not a bool tensor"):
        SubnetworkMask({"w": torch.ones(2)})
    with pytest.raises(ValueError, match=r"SubnetworkMask.masks: 'nope' is not a parameter"):
        SubnetworkMask({"nope": torch.ones(2, dtype=torch.bool)}).apply(tiny_bert())
    with pytest.raises(ValueError, match=r"SubnetworkMask.masks\['classifier.bias'\]: shape \(3,\) differs"):
        SubnetworkMask({"classifier.bias": torch.ones(3, dtype=torch.bool)}).apply(tiny_bert())
    with pytest.raises(ValueError, match=r"SubnetworkMask.from_magnitude.patterns: \('nope',\) match no"):
        SubnetworkMask.from_magnitude(tiny_bert(), 0.5, patterns=("nope",))


class LayerCalls:
    """Counts the calls of each layer's real computation (a forward hook on its attention module)."""

    def __init__(self, model) -> None:
        self.counts = [0] * len(model.bert.encoder.layer)
        for i, layer in enumerate(model.bert.encoder.layer):
            layer.attention.register_forward_hook(lambda *_, i=i: self.add(i))

    def add(self, i: int) -> None:
        self.counts[i] += 1


def logits(model, seed: int = 0):
    inputs = batch(seed)
    inputs.pop("labels")
    return model(**inputs).logits


def test_layerdrop_is_the_original_model_in_eval():
    model = tiny_bert().eval()
    expected = logits(model)
    add_layerdrop(model, 0.5)
    assert has_layerdrop(model)
    for _ in range(3):
        assert torch.equal(logits(model), expected)


def test_layerdrop_skips_layers_reproducibly_in_training():
    def run(seed: int) -> tuple[list[int], list[torch.Tensor]]:
        model = add_layerdrop(tiny_bert(dropout=0.0), 0.5).train()
        calls = LayerCalls(model)
        torch.manual_seed(seed)
        outputs = [logits(model, i) for i in range(10)]
        return calls.counts, outputs

    counts, outputs = run(3)
    assert 10 < sum(counts) < 30  # p = 0.5: about half of the 40 layer calls (first call always runs)
    again_counts, again_outputs = run(3)
    assert counts == again_counts and all(
        torch.equal(a, b) for a, b in zip(outputs, again_outputs, strict=True)
    )
    other_counts, _ = run(4)
    assert other_counts != counts


def test_a_skipped_layer_returns_its_input():
    model = add_layerdrop(tiny_bert(), 0.5).train()
    layer = model.bert.encoder.layer[0]
    hidden = torch.randn(2, 5, 32)
    layer(hidden)  # the first training call runs the layer: its output structure is then known
    skipped = 0
    for _ in range(20):
        out = layer(hidden)
        assert isinstance(out, torch.Tensor)
        skipped += out is hidden
    assert 0 < skipped < 20


def test_layerdrop_keeps_hidden_states_aligned():
    model = add_layerdrop(tiny_bert(dropout=0.0), 0.9).train()
    inputs = batch()
    inputs.pop("labels")
    for _ in range(5):
        out = model(**inputs, output_hidden_states=True)
        assert len(out.hidden_states) == 5


def test_zero_layerdrop_never_skips_nor_draws():
    model = add_layerdrop(tiny_bert(dropout=0.0), 0.0).train()
    calls = LayerCalls(model)
    torch.manual_seed(0)
    for i in range(5):
        logits(model, i)
    state = torch.get_rng_state()
    torch.manual_seed(0)
    assert calls.counts == [5] * 4 and torch.equal(state, torch.get_rng_state())


def test_remove_layerdrop_gives_the_stock_model():
    model = tiny_bert()
    keys = list(model.state_dict())
    drop = LayerDrop(model, 0.3)
    assert list(model.state_dict()) == keys  # no wrapper: checkpoints keep the stock keys
    add_layerdrop(model, 0.1)  # a second call changes p, never stacks
    assert model.bert.encoder.layer[0].forward.p == 0.1
    assert drop.model is model
    assert remove_layerdrop(model) is model and not has_layerdrop(model)
    assert list(model.state_dict()) == keys
    assert "forward" not in vars(model.bert.encoder.layer[0])
    model.train()
    calls = LayerCalls(model)
    torch.manual_seed(0)
    for i in range(5):
        logits(model, i)
    assert calls.counts == [5] * 4


def test_layerdrop_model_deep_copies():
    model = add_layerdrop(tiny_bert(), 0.5)
    copied = copy.deepcopy(model)
    layer = copied.bert.encoder.layer[2]
    assert layer.forward.layer is layer and has_layerdrop(copied)
    assert torch.equal(logits(copied.eval()), logits(model.eval()))


@pytest.mark.parametrize("p", [-0.1, 1.0, 2])
def test_bad_layerdrop_probability_is_refused(p):
    with pytest.raises(ValueError, match=rf"LayerDrop.p: {p} must be in \[0, 1\)"):
        add_layerdrop(tiny_bert(), p)

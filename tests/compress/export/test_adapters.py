"""Adapter export: one stock base folder plus peft-format (or bottleneck) folders, checked by reloading."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.export import export_adapters
from compress.peft.bottleneck import BottleneckConfig, add_bottleneck_adapters, load_bottleneck_adapters
from compress.peft.multitask import MultiTaskAdapters
from tests.conftest import tiny_bert

LORA = LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS", init_lora_weights=False)
QUERY = "bert.encoder.layer.0.attention.self.query.weight"
IDS = torch.randint(0, 1000, (3, 7), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_single_lora_adapter_loads_with_plain_peft(tmp_path, tokenizer_dir):
    model = get_peft_model(tiny_bert(layers=2), LORA)
    result = export_adapters(model, tmp_path / "adapters", AutoTokenizer.from_pretrained(tokenizer_dir))
    assert result.max_abs_diff <= 1e-5
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [
        ".compress-output",
        "base",
        "default",
    ]
    assert json.loads((tmp_path / "adapters" / "default" / "labels.json").read_text()) == [
        "LABEL_0",
        "LABEL_1",
    ]

    assert (tmp_path / "adapters" / "base" / "tokenizer.json").is_file()
    base_weights = load_file(tmp_path / "adapters" / "base" / "model.safetensors")
    assert not any("lora" in key for key in base_weights)  # adapters removed from the base, not merged
    assert torch.equal(
        base_weights[QUERY],
        model.get_base_model().get_parameter(QUERY.replace(".weight", ".base_layer.weight")),
    )

    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "adapters" / "base")
    plain = PeftModel.from_pretrained(base, tmp_path / "adapters" / "default")
    assert torch.allclose(logits(plain), logits(model), atol=1e-6)


def test_multitask_adapters_with_their_own_heads(tmp_path):
    tasks = MultiTaskAdapters(tiny_bert(num_labels=2, layers=2), LoraConfig(r=4, target_modules=["query"]))
    tasks.add_task("sentiment", ["neg", "pos"])
    tasks.add_task("topics", list("abcde"))
    for name, parameter in tasks.model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            parameter.data.normal_()
    expected = {name: logits(tasks.use(name)) for name in tasks.tasks}

    result = export_adapters(tasks, tmp_path / "adapters")
    assert result.max_abs_diff <= 1e-5
    assert tasks.model.active_adapter == "topics"  # restored after the check
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [
        ".compress-output",
        "base",
        "sentiment",
        "topics",
    ]
    base = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "adapters" / "base", num_labels=2, ignore_mismatched_sizes=True
    )
    plain = PeftModel.from_pretrained(base, tmp_path / "adapters" / "sentiment")
    assert torch.allclose(logits(plain), expected["sentiment"], atol=1e-6)


def test_bottleneck_adapters_are_written_beside_the_base(tmp_path):
    model = add_bottleneck_adapters(tiny_bert(layers=2), BottleneckConfig(reduction_factor=4))
    for name, parameter in model.named_parameters():
        if "adapter" in name:
            parameter.data.normal_(std=0.1)
    result = export_adapters(model, tmp_path / "adapters", adapter_name="houlsby")
    assert result.max_abs_diff <= 1e-5
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "adapters" / "base")
    assert not any("adapter" in name for name, _ in base.named_parameters())
    reloaded = load_bottleneck_adapters(base, tmp_path / "adapters" / "houlsby")
    assert torch.allclose(logits(reloaded), logits(model), atol=1e-6)


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="no adapters"):
        export_adapters(tiny_bert(layers=1), tmp_path / "a")
    named_base = get_peft_model(tiny_bert(layers=1), LORA, adapter_name="base")
    with pytest.raises(ValueError, match="clashes with the base folder"):
        export_adapters(named_base, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="overwrite=True"):
        export_adapters(get_peft_model(tiny_bert(layers=1), LORA), tmp_path / "a")

"""Stock HF folder export: round trip, pipeline, refusal, atomicity, sparsity-preserving LoRA merge."""

import pytest
import torch
from peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file
from torch.nn.utils import prune
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from compress.export import atomic_output, export_hf
from compress.export import hf as hf_module
from compress.peft.bottleneck import BottleneckConfig, add_bottleneck_adapters
from tests.compress.export.test_onnx import keep_heads
from tests.conftest import tiny_bert

QUERY = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def batch(tokenizer):
    return tokenizer(["a fine film", "dull, slow and far too long"], padding=True, return_tensors="pt")


def test_round_trip_gives_the_same_logits_and_pipeline_loads(tmp_path, tokenizer):
    model = tiny_bert(num_labels=2, layers=2)
    result = export_hf(model, tokenizer, tmp_path / "hf", label_names=["negative", "positive"])
    assert result.max_abs_diff <= 1e-5 and result.merge_max_abs_diff is None
    assert model.training  # the caller's model is not switched to eval mode
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no staging folder left over

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(
            reloaded(**batch(tokenizer)).logits, model(**batch(tokenizer)).logits, atol=1e-5
        )
    assert reloaded.config.id2label == {0: "negative", 1: "positive"}

    classify = pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    assert classify("a wonderful film")[0]["label"] in {"negative", "positive"}


def test_existing_folder_is_refused_unless_overwrite(tmp_path, tokenizer):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old.txt").write_text("previous export")
    with pytest.raises(ValueError, match=r"hf exists already.*overwrite=True"):
        export_hf(tiny_bert(layers=1), tokenizer, tmp_path / "hf")
    with pytest.raises(ValueError, match=r"hf holds files compress did not write .*move those files away"):
        export_hf(tiny_bert(layers=1), tokenizer, tmp_path / "hf", overwrite=True)  # the user's own folder
    assert (tmp_path / "hf" / "old.txt").is_file()

    export_hf(tiny_bert(layers=1), tokenizer, tmp_path / "ours")
    (tmp_path / "ours" / "old.txt").write_text("a file of the earlier export")
    export_hf(tiny_bert(layers=1), tokenizer, tmp_path / "ours", overwrite=True)  # replaces our export
    assert not (tmp_path / "ours" / "old.txt").exists() and (tmp_path / "ours" / "config.json").is_file()


def test_interrupted_export_leaves_nothing_and_keeps_the_old_folder(tmp_path, tokenizer, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while verifying")

    monkeypatch.setattr(hf_module, "verify_hf", crash)  # model and tokenizer are written by then
    with pytest.raises(KeyboardInterrupt):
        export_hf(tiny_bert(layers=1), tokenizer, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []

    with atomic_output(tmp_path / "old") as earlier:  # an earlier export of ours
        (earlier / "config.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        export_hf(tiny_bert(layers=1), tokenizer, tmp_path / "old", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert (tmp_path / "old" / "config.json").read_text() == "{}"  # replaced only by a complete export


def test_atomic_output_cleans_up_on_error(tmp_path):
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "out") as staging:
        (staging / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_lora_merge_keeps_the_base_sparsity(tmp_path, tokenizer):
    model = tiny_bert(layers=2)
    with torch.no_grad():
        model.get_parameter(QUERY)[:, ::2] = 0  # a 50%-sparse base weight
    lora = get_peft_model(
        model,
        LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS", init_lora_weights=False),
    )
    result = export_hf(lora, tokenizer, tmp_path / "hf")
    assert result.max_abs_diff <= 1e-5
    assert result.merge_max_abs_diff > 0  # LoRA updates on pruned weights were dropped, and it is measured

    saved = load_file(tmp_path / "hf" / "model.safetensors")[QUERY]
    assert torch.equal(saved[:, ::2], torch.zeros_like(saved[:, ::2]))
    assert not torch.equal(saved[:, 1::2], model.get_parameter(QUERY)[:, 1::2])  # the update is merged
    assert not any("lora" in key for key in load_file(tmp_path / "hf" / "model.safetensors"))


def test_ia3_merge_keeps_zeros(tmp_path, tokenizer):
    model = tiny_bert(layers=1)
    with torch.no_grad():
        model.get_parameter(QUERY)[:, ::2] = 0
    ia3 = get_peft_model(
        model, IA3Config(target_modules=["query"], feedforward_modules=[], task_type="SEQ_CLS")
    )
    for name, parameter in ia3.named_parameters():
        if "ia3_l" in name:
            parameter.data.uniform_(0.5, 1.5)
    result = export_hf(ia3, tokenizer, tmp_path / "hf")
    assert result.max_abs_diff <= 1e-5 and result.merge_max_abs_diff <= 1e-5  # IA3 merges exactly
    saved = load_file(tmp_path / "hf" / "model.safetensors")[QUERY]
    assert torch.equal(saved[:, ::2], torch.zeros_like(saved[:, ::2]))


def test_prune_masks_are_made_permanent_before_the_merge(tmp_path, tokenizer):
    model = tiny_bert(layers=1)
    lora = get_peft_model(
        model, LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS", init_lora_weights=False)
    )
    query = lora.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer
    prune.l1_unstructured(query, "weight", amount=0.5)
    export_hf(lora, tokenizer, tmp_path / "hf")
    saved = load_file(tmp_path / "hf" / "model.safetensors")
    assert not any(key.endswith(("weight_orig", "weight_mask")) for key in saved)
    assert float((saved[QUERY] == 0).float().mean()) == pytest.approx(0.5)
    assert hasattr(query, "weight_orig")  # the caller's model keeps its pruning re-parametrisation


def test_what_a_stock_folder_cannot_hold_is_refused(tmp_path, tokenizer):
    bottleneck = add_bottleneck_adapters(tiny_bert(layers=1), BottleneckConfig(reduction_factor=4))
    with pytest.raises(ValueError, match="export_adapters"):
        export_hf(bottleneck, tokenizer, tmp_path / "hf")
    prompt = get_peft_model(
        tiny_bert(layers=1), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)
    )
    with pytest.raises(ValueError, match="export_adapters"):
        export_hf(prompt, tokenizer, tmp_path / "hf")
    head_pruned = tiny_bert(layers=1)
    keep_heads(head_pruned.bert.encoder.layer[0].attention, [0])
    with pytest.raises(ValueError, match="use export_onnx"):
        export_hf(head_pruned, tokenizer, tmp_path / "hf")
    with pytest.raises(ValueError, match="label_names"):
        export_hf(tiny_bert(layers=1), tokenizer, tmp_path / "hf", label_names=["a", "b", "c"])
    assert list(tmp_path.iterdir()) == []

"""int8 dynamic quantization: in-memory model close to fp32; ONNX int8 file a quarter of the size."""

import importlib.util

import pytest
import torch
from peft import LoraConfig, get_peft_model

from compress.export import quantize_dynamic_int8, quantize_onnx_int8
from compress.export.prepare import check_batch, logits_of, max_abs_diff
from tests.conftest import tiny_bert


@pytest.fixture
def batch():
    return check_batch(vocab_size=30522, batch_size=4, length=16)


def test_in_memory_int8_logits_are_close(batch):
    model = tiny_bert(layers=2)
    int8 = quantize_dynamic_int8(model, backend="torch")
    linears = [m for m in int8.modules() if type(m) is torch.nn.Linear]
    assert linears == []  # every Linear (classifier included) is quantized
    assert type(model.bert.encoder.layer[0].intermediate.dense) is torch.nn.Linear  # the input is kept
    assert max_abs_diff(logits_of(int8, batch), logits_of(model, batch)) < 0.05


def test_int8_of_a_lora_model_merges_first(batch):
    lora = get_peft_model(
        tiny_bert(layers=1),
        LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS", init_lora_weights=False),
    )
    int8 = quantize_dynamic_int8(lora)
    assert not any("lora" in name for name, _ in int8.named_modules())
    assert max_abs_diff(logits_of(int8, batch), logits_of(lora, batch)) < 0.05


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        quantize_dynamic_int8(tiny_bert(layers=1), backend="fp8")


def test_torchao_backend_works_or_says_how_to_install_it(batch):
    model = tiny_bert(layers=1)
    if importlib.util.find_spec("torchao") is None:  # optional: not a dependency (it slows every import)
        with pytest.raises(ImportError, match="pip install torchao"):
            quantize_dynamic_int8(model, backend="torchao")
        return
    assert (
        max_abs_diff(
            logits_of(quantize_dynamic_int8(model, backend="torchao"), batch), logits_of(model, batch)
        )
        < 0.05
    )


def test_onnx_int8_file_is_smaller(tmp_path):
    from compress.export import export_onnx
    from compress.export.onnx import ONNX_FILE, run_onnx

    model = tiny_bert(layers=1)
    example = check_batch(vocab_size=30522, batch_size=2, length=8)
    folder = export_onnx(model, example, tmp_path / "onnx").path
    target = quantize_onnx_int8(folder / ONNX_FILE, tmp_path / "model.int8.onnx")
    assert target.stat().st_size < 0.3 * (folder / ONNX_FILE).stat().st_size
    inputs = check_batch(vocab_size=30522, batch_size=3, length=20)
    assert max_abs_diff(torch.from_numpy(run_onnx(target, inputs)), logits_of(model, inputs)) < 0.05

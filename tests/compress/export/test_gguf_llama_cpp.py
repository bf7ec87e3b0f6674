"""The GGUF files run in llama.cpp itself (llama-cpp-python; `make test-slow` installs it first)."""

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress.assets import resolve_model_source
from compress.export import export_gguf
from compress.export.llama_cpp import LlamaCppModel
from compress.sparsity import prune_llm

pytestmark = pytest.mark.slow
PROMPT = "Shares in the company fell after the government said on Monday that"


@pytest.fixture(scope="module")
def pruned():
    """The tiny Llama with sharp attention (q, k x 8), pruned in depth, FFN, heads and hidden size."""
    source = resolve_model_source("tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight *= 8
            layer.self_attn.k_proj.weight *= 8
    calibration = torch.randint(0, 1024, (8, 32), generator=torch.Generator().manual_seed(0))
    kept = prune_llm(copy.deepcopy(model), calibration, remove_layers=1, ffn_ratio=0.5, head_ratio=0.5,
                     hidden_ratio=0.25, progress=False)  # fmt: skip
    return kept, AutoTokenizer.from_pretrained(source)


@pytest.mark.parametrize("kind, tolerance", [("f16", 1e-2), ("q8_0", 1e-1)])
def test_llama_cpp_reads_the_pruned_export_with_the_same_tokens_and_logits(pruned, kind, tolerance, tmp_path):
    pytest.importorskip("llama_cpp", reason="make test-slow installs llama-cpp-python (make llamacpp)")
    from llama_cpp import Llama

    model, tokenizer = pruned
    export_gguf(model, tokenizer, tmp_path / "gguf", types=(kind,))
    llm = Llama(model_path=str(tmp_path / "gguf" / f"model-{kind}.gguf"), n_ctx=128, n_threads=1,
                logits_all=True, verbose=False)  # fmt: skip
    ids = tokenizer(PROMPT).input_ids
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    relative = np.abs(np.asarray(llm.scores[: len(ids)]) - expected).max() / np.abs(expected).max()
    assert relative < tolerance
    llm.close()
    greedy = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :].tolist()
    runner = LlamaCppModel(tmp_path / "gguf" / f"model-{kind}.gguf", threads=1)
    tokens, first, total = runner.generate(ids, 8)
    runner.close()
    assert 0 < first < total and len(tokens) == 8
    if kind == "f16":
        assert tokens == greedy

"""Stock HF export of a causal LM: reload with the same logits, generation config, chat template, refusals."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from compress.assets import resolve_model_source
from compress.export import export_hf
from compress.export.prepare import check_batch


@pytest.fixture(scope="module")
def tiny():
    folder = resolve_model_source("tiny-llama")
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_lora_causal_lm_exports_as_a_plain_folder_that_generates_alike(tmp_path, tiny):
    model, tokenizer = tiny
    config = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    lora = get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():  # a non-zero adapter, so the merge changes the weights
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    result = export_hf(lora, tokenizer, tmp_path / "hf")
    assert result.max_abs_diff <= 1e-5 and result.merge_max_abs_diff <= 1e-4
    folder = tmp_path / "hf"
    assert not (folder / "adapter_config.json").exists()
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).chat_template == tokenizer.chat_template
    prompt = tokenizer("Shares rose on", return_tensors="pt")
    generated = reloaded.generate(**prompt, max_new_tokens=8, do_sample=False)
    merged = lora.merge_and_unload().eval()  # what the folder must hold
    assert torch.equal(generated, merged.generate(**prompt, max_new_tokens=8, do_sample=False))


def test_a_model_without_generation_config_gets_one_from_its_config(tmp_path, tiny):
    model, tokenizer = tiny
    bare = AutoModelForCausalLM.from_config(model.config)
    bare.generation_config = None
    export_hf(bare, tokenizer, tmp_path / "hf")
    saved = GenerationConfig.from_pretrained(tmp_path / "hf")
    assert saved.eos_token_id == model.config.eos_token_id and saved.bos_token_id == model.config.bos_token_id


def test_label_names_are_refused_for_a_causal_lm(tmp_path, tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="label_names: a causal language model has no classes"):
        export_hf(model, tokenizer, tmp_path / "hf", label_names=["a", "b"])
    assert not (tmp_path / "hf").exists()


def test_check_batch_pads_a_tokenizer_without_pad_token(tiny):
    _, tokenizer = tiny
    unpadded = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    unpadded.pad_token = None
    batch = check_batch(unpadded, length=24, names=("input_ids", "attention_mask"))
    padded = check_batch(tokenizer, length=24, names=("input_ids", "attention_mask"))
    assert torch.equal(batch["attention_mask"], padded["attention_mask"])
    real = batch["attention_mask"].bool()
    assert torch.equal(batch["input_ids"][real], padded["input_ids"][real])

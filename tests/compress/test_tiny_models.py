"""The ``tiny-llama`` alias: a tiny random Llama with its own tokenizer, built once into a cached folder."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress import tiny_models
from compress.assets import GENERATED_ALIASES, package_dir, resolve_model_source
from compress.tiny_models import DONE, tiny_llama_folder

CHAT = [{"role": "user", "content": "Who won the match?"}]


@pytest.fixture(scope="module")
def corpus():
    asset, sub = GENERATED_ALIASES["tiny-llama"]
    return package_dir(asset) / sub


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def folder(corpus, root):
    return tiny_llama_folder(corpus, root)


@pytest.fixture(scope="module")
def tokenizer(folder):
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def model(folder):
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_the_alias_resolves_to_the_cached_folder(folder, root, corpus, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE", str(root))
    assert resolve_model_source("tiny-llama") == str(folder)
    assert resolve_model_source("Tiny-Llama") == str(folder)  # aliases are case-insensitive
    key = tiny_models.cache_key(tiny_models.bbc_articles(corpus))
    assert folder.name == f"tiny-llama-{key}" and (folder / DONE).is_file()
    assert sorted(p.name for p in root.iterdir()) == [folder.name]  # no staging folder left behind


def test_the_model_is_the_tiny_llama_of_the_recipe(model, tokenizer):
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (
        "llama",
        4,
        64,
        128,
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)
    assert config.vocab_size == len(tokenizer) == 1024 and config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = (config.bos_token_id, config.eos_token_id, config.pad_token_id)
    assert ids == (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    generation = model.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == ids


def test_the_tokenizer_has_smollm2s_special_tokens_and_round_trips_text(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert tokenizer.convert_tokens_to_ids(list(tiny_models.SPECIAL_TOKENS)) == [0, 1, 2]
    text = "The Bank of England held rates at 4.75%.\n  Café owners (and 東京) cheered 🎉"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text and 0 not in ids  # byte-level: nothing is unknown
    assert len(tokenizer("the government said")["input_ids"]) <= 4  # trained on news: common words merge


def test_the_chat_template_renders_with_and_without_the_generation_prompt(tokenizer):
    plain = tokenizer.apply_chat_template(CHAT, tokenize=False)
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert plain.startswith("<|im_start|>system\n") and plain.endswith(
        "<|im_start|>user\nWho won the match?<|im_end|>\n"
    )
    assert prompt == plain + "<|im_start|>assistant\n"
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 3 and tokenizer.decode(ids) == prompt


def test_a_forward_pass_gives_logits_over_the_vocabulary_and_generate_runs(model, tokenizer):
    batch = tokenizer(["Shares rose sharply", "The film won"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer)) and logits.isfinite().all()
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_building_twice_gives_identical_files(folder, corpus, tmp_path):
    other = tiny_llama_folder(corpus, tmp_path)
    assert other != folder
    ours, theirs = load_file(folder / "model.safetensors"), load_file(other / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (folder / name).read_bytes() == (other / name).read_bytes(), name


def test_building_leaves_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_models.tiny_llama(tiny_models.train_tokenizer(["a tiny corpus"] * 4, vocab_size=300))
    assert torch.equal(torch.rand(3), expected)


def test_a_second_call_is_a_cache_hit(folder, corpus, root, monkeypatch):
    stamp = os.stat(folder).st_mtime_ns

    def no_build(articles, target):
        raise AssertionError(f"rebuilt into {target}")

    monkeypatch.setattr(tiny_models, "build_tiny_llama", no_build)
    assert tiny_llama_folder(corpus, root) == folder and os.stat(folder).st_mtime_ns == stamp


def test_a_crashed_builders_staging_folder_is_never_used(folder, corpus, tmp_path):
    leftover = tmp_path / f"{folder.name}.partial-999999"  # another pid's staging folder, never renamed
    (leftover / "model.safetensors").mkdir(parents=True)
    built = tiny_llama_folder(corpus, tmp_path)
    assert built == tmp_path / folder.name and (built / DONE).is_file()
    assert (built / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_a_folder_without_the_marker_is_rebuilt(folder, corpus, tmp_path):
    half = tmp_path / folder.name  # what a crash of a non-atomic writer would leave: some files, no marker
    half.mkdir()
    (half / "config.json").write_text("{}")
    rebuilt = tiny_llama_folder(corpus, tmp_path)
    assert (rebuilt / DONE).is_file()
    assert (rebuilt / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # the stale one moved aside and removed


def test_a_concurrent_builder_that_finishes_first_wins(folder, corpus, tmp_path, monkeypatch):
    build = tiny_models.build_tiny_llama

    def build_while_another_finishes(articles, target):
        build(articles, target)
        shutil.copytree(folder, tmp_path / folder.name)  # the other builder's rename lands first

    monkeypatch.setattr(tiny_models, "build_tiny_llama", build_while_another_finishes)
    assert tiny_llama_folder(corpus, tmp_path) == tmp_path / folder.name
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # our staging folder is gone


def test_the_key_changes_with_the_articles():
    assert tiny_models.cache_key(["one article"]) != tiny_models.cache_key(["another article"])
    assert tiny_models.cache_key(["a", "b"]) != tiny_models.cache_key(["ab"])


@pytest.mark.slow
def test_the_chat_template_is_smollm2s():
    real = AutoTokenizer.from_pretrained(resolve_model_source("smollm2-135m"))
    assert real.chat_template == tiny_models.CHAT_TEMPLATE
    assert [real.bos_token, real.eos_token, real.pad_token, real.unk_token] == [
        tiny_models.ROLES[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
    ]

"""GGUF export: transformers round trips (tied, untied, pruned), q8_0 fallbacks, tokenizer metadata, errors"""

import copy

import gguf
import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

from compress.assets import gguf_file_of, resolve_model_source
from compress.export import gguf as gguf_module
from compress.export.gguf import TOLERANCES, check_inputs, export_gguf
from compress.export.gguf_tokenizer import reference_fields
from compress.export.prepare import logits_of, max_abs_diff
from compress.sparsity import prune_llm

PROMPT = "Shares in the company rose"
TEXTS = ["Shares rose 3% on Monday", "Ünïcode  spaces\tand\nlines", "<|im_start|>user\nHi<|im_end|>"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_source("tiny-llama"))


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(resolve_model_source("tiny-llama")).eval()


@pytest.fixture(scope="module")
def sharp(model):
    """The tiny model with q and k scaled 8x: a random model's attention is nearly uniform, so a q/k row
    permutation error would hardly change its logits (0.8%); this one's logits move by 85%."""
    sharp = copy.deepcopy(model)
    with torch.no_grad():
        for layer in sharp.model.layers:
            layer.self_attn.q_proj.weight *= 8
            layer.self_attn.k_proj.weight *= 8
    return sharp


@pytest.fixture(scope="module")
def exported(sharp, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "gguf"
    return export_gguf(sharp, tokenizer, folder, types=("f32", "f16", "q8_0"))


@pytest.fixture(scope="module")
def pruned(model):
    """Depth, FFN, heads and hidden pruned: 3 layers, FFN 64, 2 heads x 16 (32 != hidden 48), 1 kv head."""
    calibration = torch.randint(0, 1024, (8, 32), generator=torch.Generator().manual_seed(0))
    return prune_llm(
        copy.deepcopy(model),
        calibration,
        remove_layers=1,
        ffn_ratio=0.5,
        head_ratio=0.5,
        hidden_ratio=0.25,
        progress=False,
    )


@pytest.fixture(scope="module")
def pruned_export(pruned, tokenizer, tmp_path_factory):
    return export_gguf(pruned, tokenizer, tmp_path_factory.mktemp("pruned") / "gguf")


def reload(result, name: str):
    return AutoModelForCausalLM.from_pretrained(result.path, gguf_file=name, dtype=torch.float32).eval()


def tensor_types(file) -> dict[str, str]:
    return {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(file).tensors}


def greedy(model, tokenizer) -> list[int]:
    prompt = tokenizer(PROMPT, return_tensors="pt")
    ids = tokenizer.eos_token_id, tokenizer.pad_token_id
    output = model.generate(
        **prompt, max_new_tokens=8, do_sample=False, eos_token_id=ids[0], pad_token_id=ids[1]
    )
    return output[0].tolist()


def test_f32_is_exact_and_f16_q8_0_within_tolerance_and_generate_the_same(exported, sharp, tokenizer):
    extras = exported.extras
    assert sorted(p.name for p in exported.path.iterdir()) == [
        ".compress-output",
        *(f"model-{t}.gguf" for t in ("f16", "f32", "q8_0")),
    ]
    assert extras["gguf_f32_max_abs_diff"] < 1e-5  # the q/k permutation round trips exactly
    assert 0 < extras["gguf_f16_relative_diff"] < TOLERANCES["f16"] / 5
    assert extras["gguf_f16_relative_diff"] < extras["gguf_q8_0_relative_diff"] < TOLERANCES["q8_0"] / 2
    assert exported.max_abs_diff == extras["gguf_f16_max_abs_diff"]
    assert extras["gguf_q8_0_bytes"] < extras["gguf_f16_bytes"] < extras["gguf_f32_bytes"]
    assert greedy(reload(exported, "model-f16.gguf"), tokenizer) == greedy(sharp, tokenizer)


def test_norms_stay_f32_and_matrices_take_the_file_type(exported):
    types = tensor_types(exported.path / "model-q8_0.gguf")
    assert {types[name] for name in types if name.endswith("norm.weight")} == {"F32"}
    assert {types[name] for name in types if not name.endswith("norm.weight")} == {"Q8_0"}
    assert set(tensor_types(exported.path / "model-f16.gguf").values()) == {"F16", "F32"}
    assert exported.f16_fallbacks == {"f32": [], "f16": [], "q8_0": []}


def test_pruned_model_round_trips_with_its_shapes(pruned_export, pruned):
    config = reload(pruned_export, "model-f16.gguf").config
    shapes = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
    assert [getattr(config, name) for name in shapes] == [3, 48, 64, 2]
    assert (config.num_key_value_heads, config.head_dim) == (1, 16)
    assert [getattr(pruned.config, name) for name in shapes] == [3, 48, 64, 2]
    assert pruned_export.extras["gguf_f16_relative_diff"] < TOLERANCES["f16"] / 5
    assert pruned_export.extras["gguf_q8_0_relative_diff"] < TOLERANCES["q8_0"] / 5
    reader = gguf.GGUFReader(pruned_export.path / "model-f16.gguf")
    assert reader.fields["llama.attention.key_length"].contents() == 16
    assert reader.fields["llama.embedding_length"].contents() == 48


def test_q8_0_rows_not_a_multiple_of_32_fall_back_to_f16_and_are_recorded(pruned_export, pruned):
    in_features = {  # row length of every matrix: hidden 48 for token_embd, q/k/v, gate/up
        name: weight.shape[1] for name, weight in gguf_module.llama_tensors(pruned) if weight.ndim == 2
    }
    expected = sorted(name for name, length in in_features.items() if length % 32)
    assert "token_embd.weight" in expected and "blk.0.ffn_down.weight" not in expected
    assert sorted(pruned_export.f16_fallbacks["q8_0"]) == expected
    assert pruned_export.extras["gguf_q8_0_f16_fallbacks"] == len(expected)
    types = tensor_types(pruned_export.path / "model-q8_0.gguf")
    assert {types[name] for name in expected} == {"F16"}
    assert {types[name] for name in set(in_features) - set(expected)} == {"Q8_0"}  # o_proj (32), down (64)


def test_tied_embeddings_write_no_output_tensor_untied_do(exported, model, tokenizer, tmp_path):
    assert "output.weight" not in tensor_types(exported.path / "model-f16.gguf")
    torch.manual_seed(1)
    untied = LlamaForCausalLM(LlamaConfig(**{**model.config.to_dict(), "tie_word_embeddings": False}))
    result = export_gguf(untied, tokenizer, tmp_path / "untied", types=("f16",))
    assert "output.weight" in tensor_types(tmp_path / "untied" / "model-f16.gguf")
    assert reload(result, "model-f16.gguf").config.tie_word_embeddings is False
    assert result.extras["gguf_f16_relative_diff"] < TOLERANCES["f16"] / 5


def test_a_larger_model_vocabulary_is_padded_as_llama_cpp_does(model, tokenizer, tmp_path):
    torch.manual_seed(0)
    padded = LlamaForCausalLM(LlamaConfig(**{**model.config.to_dict(), "vocab_size": 1040}))
    result = export_gguf(padded, tokenizer, tmp_path / "out", types=("f16",))
    fields = {key: value for key, value, _, _ in reference_fields(tmp_path / "out" / "model-f16.gguf")}
    assert fields["tokenizer.ggml.tokens"][1023:1025] == [tokenizer.convert_ids_to_tokens(1023), "[PAD1024]"]
    assert set(fields["tokenizer.ggml.token_type"][1024:]) == {gguf.TokenType.UNUSED}
    assert result.extras["gguf_f16_relative_diff"] < TOLERANCES["f16"] / 5


def test_the_gguf_tokenizer_encodes_like_the_original_and_carries_the_chat_template(exported, tokenizer):
    reloaded = AutoTokenizer.from_pretrained(exported.path, gguf_file="model-q8_0.gguf")
    for text in TEXTS:
        assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.chat_template == tokenizer.chat_template
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (1, 2, 2)
    fields = dict((key, value) for key, value, _, _ in reference_fields(exported.path / "model-f16.gguf"))
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]  # special tokens CONTROL, then NORMAL
    assert fields["tokenizer.ggml.merges"][0] == "Ġ t" and fields["tokenizer.ggml.add_bos_token"] is False


def write_reference(file, fields) -> None:
    """A vocabulary-only GGUF file: the tokenizer metadata ``fields`` and no tensors."""
    writer = gguf.GGUFWriter(file, "llama")
    for key, value, value_type, item_type in fields:
        writer.add_key_value(key, value, value_type, sub_type=item_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def reference_fields_of_tiny(exported):
    """The tiny tokenizer's metadata as a real converter might write it: another pre name, extra keys."""
    fields = [f for f in reference_fields(exported.path / "model-f16.gguf") if f[0] != "tokenizer.ggml.pre"]
    V = gguf.GGUFValueType
    extra = [
        ("tokenizer.ggml.pre", "smollm", V.STRING, None),
        ("tokenizer.ggml.add_space_prefix", False, V.BOOL, None),
    ]
    return fields + extra


def test_unchanged_tokenizer_copies_the_reference_metadata_verbatim(
    reference_fields_of_tiny, model, tokenizer, tmp_path
):
    write_reference(tmp_path / "reference.gguf", reference_fields_of_tiny)
    export_gguf(model, tokenizer, tmp_path / "out", reference=tmp_path / "reference.gguf", types=("f16",))
    copied = reference_fields(tmp_path / "out" / "model-f16.gguf")
    assert sorted(copied) == sorted(reference_fields(tmp_path / "reference.gguf"))  # keys, values and types
    assert ("tokenizer.ggml.add_space_prefix", False, gguf.GGUFValueType.BOOL, None) in copied


def test_a_reference_with_our_tokens_but_other_special_tokens_fails_the_check(
    reference_fields_of_tiny, model, tokenizer, tmp_path
):
    bos = gguf.Keys.Tokenizer.BOS_ID
    fields = [
        (key, 0, *rest) if key == bos else (key, value, *rest)
        for key, value, *rest in reference_fields_of_tiny
    ]
    write_reference(tmp_path / "reference.gguf", fields)
    with pytest.raises(ValueError, match=r"does not carry the tokenizer's bos token.*pass no reference"):
        export_gguf(model, tokenizer, tmp_path / "out", reference=tmp_path / "reference.gguf", types=("f16",))
    assert not (tmp_path / "out").exists()


def test_changed_tokenizer_is_built_with_the_pre_tokenizer_name_of_the_reference(
    reference_fields_of_tiny, model, tokenizer, tmp_path
):
    other = [list(f) for f in reference_fields_of_tiny]
    tokens = next(f for f in other if f[0] == "tokenizer.ggml.tokens")
    tokens[1] = tokens[1][:5] + ["another token"] + tokens[1][6:]
    write_reference(tmp_path / "reference.gguf", [tuple(f) for f in other])
    export_gguf(model, tokenizer, tmp_path / "out", reference=tmp_path / "reference.gguf", types=("f16",))
    built = {key: value for key, value, _, _ in reference_fields(tmp_path / "out" / "model-f16.gguf")}
    assert built["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(1024)))
    assert built["tokenizer.ggml.pre"] == "smollm" and "tokenizer.ggml.add_space_prefix" not in built


def digits_first(tokenizer):
    """The tiny tokenizer with SmolLM2's HF pre-tokenizer (digits split, then byte-level)."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    roles = dict(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>")
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=tokenizer.chat_template, **roles)


def test_an_unnamed_pre_tokenizer_needs_a_reference(reference_fields_of_tiny, model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"pre-tokenizer.*pass reference="):
        export_gguf(model, digits_first(tokenizer), tmp_path / "out", types=("f16",))
    assert not (tmp_path / "out").exists()
    fields = [f for f in reference_fields_of_tiny if f[0] != "tokenizer.ggml.tokens"]  # no tokens: built
    write_reference(tmp_path / "reference.gguf", fields)
    # The check passes: its texts have no digits, and transformers splits 'smollm' GPT-2's way
    export_gguf(
        model,
        digits_first(tokenizer),
        tmp_path / "out",
        reference=tmp_path / "reference.gguf",
        types=("f16",),
    )
    built = {key: value for key, value, _, _ in reference_fields(tmp_path / "out" / "model-f16.gguf")}
    assert built["tokenizer.ggml.pre"] == "smollm" and len(built["tokenizer.ggml.tokens"]) == 1024


def test_a_non_bpe_tokenizer_is_refused(tmp_path):
    wordpiece = AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6"))
    config = LlamaConfig(
        vocab_size=len(wordpiece),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    with pytest.raises(ValueError, match=r"WordPiece.*not a byte-level BPE tokenizer.*reference="):
        export_gguf(LlamaForCausalLM(config), wordpiece, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_lora_model_is_merged_first(model, tokenizer, tmp_path):
    lora = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    result = export_gguf(lora, tokenizer, tmp_path / "out", types=("f16",))
    assert result.merge_max_abs_diff < 1e-5
    assert result.extras["gguf_f16_relative_diff"] < TOLERANCES["f16"] / 5
    batch = check_inputs(tokenizer)[1]
    base_diff = max_abs_diff(logits_of(model, batch), logits_of(reload(result, "model-f16.gguf"), batch))
    assert base_diff > 10 * result.max_abs_diff  # the file holds the merged LoRA update, not the base


def test_mistral_without_sliding_window_is_written_as_llama(model, tokenizer, tmp_path):
    config = MistralConfig(**{**model.config.to_dict(), "model_type": "mistral", "sliding_window": None})
    torch.manual_seed(0)
    result = export_gguf(MistralForCausalLM(config), tokenizer, tmp_path / "out", types=("f16",))
    assert result.extras["gguf_f16_relative_diff"] < TOLERANCES["f16"] / 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(types=("f16", "q4_0")), r"types: \['f16', 'q4_0'\] has unknown.*llama-quantize"),
        (dict(types="f16"), r"types: expected a sequence"),
        (dict(tolerance={"f32": 1.0}), r"tolerance: \['f32'\] are not in types"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(model, tokenizer, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        export_gguf(model, tokenizer, tmp_path / "out", **change)
    assert list(tmp_path.iterdir()) == []


def test_models_other_than_llama_are_refused(tokenizer, tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*got GPT2LMHeadModel \(model_type 'gpt2'\)"):
        export_gguf(gpt2, tokenizer, tmp_path / "out")
    scaled = LlamaConfig(
        vocab_size=1024,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    )
    with pytest.raises(ValueError, match=r"rope scaling.*convert_hf_to_gguf"):
        export_gguf(LlamaForCausalLM(scaled), tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_refused_and_kept(model, tokenizer, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.gguf").write_text("previous export")
    with pytest.raises(ValueError, match=r"out exists already.*overwrite=True"):
        export_gguf(model, tokenizer, tmp_path / "out")
    with pytest.raises(ValueError, match=r"out holds files compress did not write"):
        export_gguf(model, tokenizer, tmp_path / "out", overwrite=True)  # the user's own folder
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.gguf"]
    export_gguf(model, tokenizer, tmp_path / "ours", types=("f16", "q8_0"))
    export_gguf(model, tokenizer, tmp_path / "ours", types=("f16",), overwrite=True)  # an export of ours
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [".compress-output", "model-f16.gguf"]


def test_a_failed_check_raises_and_leaves_nothing(sharp, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_module, "permute", lambda weight, heads: weight)  # HF's q/k row order
    with pytest.raises(ValueError, match=r"out/model-q8_0.gguf reloaded with transformers gives logits"):
        export_gguf(sharp, tokenizer, tmp_path / "out", types=("q8_0",))
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging sibling


def test_unverified_export_writes_the_files_and_measures_nothing(model, tokenizer, tmp_path):
    result = export_gguf(model, tokenizer, tmp_path / "out", types=("q8_0",), verify=False)
    assert result.max_abs_diff is None and "gguf_q8_0_max_abs_diff" not in result.extras
    assert result.extras["gguf_q8_0_bytes"] == (tmp_path / "out" / "model-q8_0.gguf").stat().st_size


@pytest.mark.slow
def test_the_teachers_gguf_tokenizer_metadata_is_copied_for_its_vocabulary(tokenizer, tmp_path):
    """A random 1-layer Llama with SmolLM2's vocabulary: its metadata is the reference's, verbatim; the tiny
    tokenizer (another vocabulary) gets built metadata with the reference's pre-tokenizer name."""
    reference = gguf_file_of("smollm2-135m")
    smollm = AutoTokenizer.from_pretrained(resolve_model_source("smollm2-135m"))
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    )
    export_gguf(LlamaForCausalLM(config), smollm, tmp_path / "smollm", reference=reference, types=("q8_0",))
    assert sorted(reference_fields(tmp_path / "smollm" / "model-q8_0.gguf")) == sorted(
        reference_fields(reference)
    )

    small = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "vocab_size": 1024}))
    export_gguf(small, tokenizer, tmp_path / "tiny", reference=reference, types=("q8_0",))
    built = {key: value for key, value, _, _ in reference_fields(tmp_path / "tiny" / "model-q8_0.gguf")}
    assert built["tokenizer.ggml.pre"] == "smollm" and len(built["tokenizer.ggml.tokens"]) == 1024

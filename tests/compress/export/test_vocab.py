"""Vocabulary trimming: same logits in-corpus, plain-transformers round trip, fallbacks, clear errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    PreTrainedTokenizerFast,
)

from compress.export.vocab import trim_vocabulary, used_token_ids
from tests.conftest import WORDS, tiny_bert

CORPUS = [
    "A moving, brilliant film -- the plot is superb!",
    "Dull and tedious; the actor looks bored in every scene.",
    "It's a delightful story (with a clumsy ending).",
    *WORDS.values(),
]
UNSEEN = "Xylophone zebras of 1982 quarrel"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def trimmed(tokenizer):
    """(original model, keep ids, trimmed model, trimmed tokenizer), all in eval mode."""
    model = tiny_bert(layers=2).eval()
    keep = used_token_ids(tokenizer, CORPUS)
    small_model, small_tokenizer = trim_vocabulary(model, tokenizer, keep)
    return model, keep, small_model.eval(), small_tokenizer


def logits(model, tokenizer, texts, **kwargs):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt", **kwargs)).logits


def test_used_token_ids_are_sorted_and_hold_specials_corpus_and_characters(tokenizer):
    plain = used_token_ids(tokenizer, CORPUS, spell_out=False)
    spelled = used_token_ids(tokenizer, iter(CORPUS), batch_size=2)  # any iterable, any batching
    assert plain == sorted(set(plain)) and set(tokenizer.all_special_ids) <= set(plain)
    assert {i for ids in tokenizer(CORPUS)["input_ids"] for i in ids} <= set(plain)
    added = set(tokenizer.convert_ids_to_tokens(sorted(set(spelled) - set(plain))))
    assert {"x", "##x", "9", "##9"} <= added and all(len(t.removeprefix("##")) == 1 for t in added)


def test_max_length_drops_tokens_past_the_truncation(tokenizer):
    text, last = ["a film " * 20 + "orchestra"], tokenizer.convert_tokens_to_ids("orchestra")
    assert last != tokenizer.unk_token_id
    assert last not in used_token_ids(tokenizer, text, max_length=16, spell_out=False)
    assert last in used_token_ids(tokenizer, text, spell_out=False)


def test_in_corpus_texts_give_the_same_tokens_and_logits(tokenizer, trimmed):
    model, keep, small_model, small_tokenizer = trimmed
    ids = tokenizer(CORPUS)["input_ids"]
    small_ids = small_tokenizer(CORPUS)["input_ids"]
    assert [[keep[i] for i in row] for row in small_ids] == ids
    expected = logits(model, tokenizer, CORPUS)
    torch.testing.assert_close(logits(small_model, small_tokenizer, CORPUS), expected, rtol=0, atol=1e-6)


def test_keep_ids_order_is_the_new_numbering(tokenizer):
    model = tiny_bert(layers=1).eval()
    keep = used_token_ids(tokenizer, CORPUS)[::-1]  # [PAD] becomes the last id
    small_model, small_tokenizer = trim_vocabulary(model, tokenizer, keep)
    assert small_tokenizer.pad_token_id == small_model.config.pad_token_id == len(keep) - 1
    assert small_model.get_input_embeddings().padding_idx == len(keep) - 1
    expected = logits(model, tokenizer, CORPUS)
    torch.testing.assert_close(
        logits(small_model.eval(), small_tokenizer, CORPUS), expected, rtol=0, atol=1e-6
    )


def test_round_trip_loads_with_plain_transformers_in_a_fresh_process(tmp_path, tokenizer, trimmed):
    model, _, small_model, small_tokenizer = trimmed
    small_model.save_pretrained(tmp_path)
    small_tokenizer.save_pretrained(tmp_path)
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "batch = tok(json.loads(sys.argv[2]), padding=True, return_tensors='pt')\n"
        "with torch.no_grad():\n"
        "    out = model(**batch).logits.tolist()\n"
        "print(json.dumps({'fast': tok.is_fast, 'len': len(tok), 'logits': out,\n"
        "                  'modules': sorted({type(tok).__module__, type(model).__module__})}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), json.dumps(CORPUS)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True, timeout=120,
    )  # fmt: skip
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["fast"] and loaded["len"] == len(small_tokenizer) == small_model.config.vocab_size
    assert all(m.startswith("transformers.") for m in loaded["modules"])
    expected = logits(model, tokenizer, CORPUS)
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=0, atol=1e-6)


def test_out_of_corpus_text_is_spelled_out_or_falls_back_to_unk(tokenizer, trimmed):
    _, keep, small_model, small_tokenizer = trimmed
    ids = small_tokenizer(UNSEEN)["input_ids"]
    assert small_tokenizer.unk_token_id not in ids and all(0 <= i < len(keep) for i in ids)
    assert small_tokenizer.decode(ids, skip_special_tokens=True) == UNSEEN.lower()
    no_characters = used_token_ids(tokenizer, CORPUS, spell_out=False)
    _, bare_tokenizer = trim_vocabulary(tiny_bert(layers=1), tokenizer, no_characters)
    bare_ids = bare_tokenizer(UNSEEN)["input_ids"]
    assert bare_tokenizer.unk_token_id in bare_ids and all(0 <= i < len(no_characters) for i in bare_ids)
    assert logits(small_model, small_tokenizer, [UNSEEN]).isfinite().all()


def test_special_tokens_pairs_padding_and_truncation_are_remapped(tokenizer, trimmed):
    _, keep, small_model, small_tokenizer = trimmed
    settings = dict(padding="max_length", truncation=True, max_length=12)
    pairs = (CORPUS[:2], CORPUS[2:4])
    original, small = tokenizer(*pairs, **settings), small_tokenizer(*pairs, **settings)
    assert [[keep[i] for i in row] for row in small["input_ids"]] == original["input_ids"]
    assert small["token_type_ids"] == original["token_type_ids"]
    assert small["attention_mask"] == original["attention_mask"]
    for name in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"):
        assert keep[getattr(small_tokenizer, f"{name}_id")] == getattr(tokenizer, f"{name}_id"), name
    assert small_model.config.pad_token_id == small_tokenizer.pad_token_id
    assert small_model.get_input_embeddings().padding_idx == small_tokenizer.pad_token_id
    assert small_tokenizer.model_max_length == tokenizer.model_max_length


def test_runtime_settings_such_as_left_padding_carry_over(tokenizer_dir, tmp_path):
    left = AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left", model_max_length=64)
    _, small = trim_vocabulary(tiny_bert(layers=1), left, used_token_ids(left, CORPUS))
    small.save_pretrained(tmp_path)
    for loaded in (small, AutoTokenizer.from_pretrained(tmp_path)):
        assert (loaded.padding_side, loaded.model_max_length) == ("left", 64)
        assert loaded(["a film", "a dull plot"], padding=True)["input_ids"][0][0] == loaded.pad_token_id


def test_a_generic_fast_tokenizer_gets_its_post_processor_remapped(tokenizer, tmp_path):
    # BertTokenizer rebuilds [CLS]/[SEP] itself; a plain fast tokenizer relies on the remapped template.
    specials = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    generic = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, **specials)
    keep = used_token_ids(generic, CORPUS)
    _, small = trim_vocabulary(tiny_bert(layers=1), generic, keep)
    small.save_pretrained(tmp_path)
    for loaded in (small, AutoTokenizer.from_pretrained(tmp_path)):
        rows = loaded(CORPUS[:2], CORPUS[2:4])["input_ids"]
        assert [[keep[i] for i in row] for row in rows] == tokenizer(CORPUS[:2], CORPUS[2:4])["input_ids"]


def test_parameter_count_drops_by_the_removed_rows(trimmed):
    model, keep, small_model, _ = trimmed
    removed = (model.config.vocab_size - len(keep)) * model.config.hidden_size
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) - count(small_model) == removed
    assert small_model.config.vocab_size == len(keep) and model.config.vocab_size == 30522  # copy, not edit


def test_tied_output_embeddings_keep_the_selected_columns(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()  # a zero bias would hide a wrong bias selection
    keep = used_token_ids(tokenizer, CORPUS)
    small_model, small_tokenizer = trim_vocabulary(model, tokenizer, keep)
    assert small_model.get_output_embeddings().weight is small_model.get_input_embeddings().weight
    expected = logits(model, tokenizer, CORPUS)[..., keep]
    torch.testing.assert_close(
        logits(small_model.eval(), small_tokenizer, CORPUS), expected, rtol=0, atol=1e-6
    )


def test_non_wordpiece_tokenizer_is_refused(tokenizer):
    word_level = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "film": 1}, unk_token="[UNK]"))
    )
    with pytest.raises(TypeError, match="tokenizer: .*WordLevel.*only BERT-style WordPiece"):
        used_token_ids(word_level, CORPUS)
    with pytest.raises(TypeError, match="only BERT-style WordPiece"):
        trim_vocabulary(tiny_bert(layers=1), word_level, [0, 1])


def test_model_without_input_embeddings_is_refused(tokenizer):
    with pytest.raises(TypeError, match="model: Linear has no `get_input_embeddings"):
        trim_vocabulary(torch.nn.Linear(2, 2), tokenizer, tokenizer.all_special_ids)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ([0, 101, 102, 103, 2000], r"special tokens \['\[UNK\]'\]"),
        ([0, 100, 101, 102, 103, 2000, 2000], r"ids \[2000\] appear more than once"),
        ([0, 100, 101, 102, 103, 40000], r"ids \[40000\] are outside \[0, 30522\)"),
    ],
)
def test_bad_keep_ids_are_refused(tokenizer, keep, message):
    with pytest.raises(ValueError, match="keep_ids: " + message):
        trim_vocabulary(tiny_bert(layers=1), tokenizer, keep)

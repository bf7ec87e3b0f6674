"""`compress export` ships the model's own tokenizer or refuses, and checks the export on real text.

The reported case: a student saved with ``module.student.save_pretrained(dir)`` alone (no tokenizer files)
was exported with a 5-token tokenizer transformers made up, and every prediction became one class.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from compress.assets import resolve_model_source
from compress.commands import export as export_command
from compress.commands import main
from compress.export import predictions
from compress.export.predictions import check_same_predictions, differing_predictions
from compress.export.prepare import CHECK_TEXTS
from compress.export.tokenizer_fit import check_known_tokens, unknown_fraction
from tests.conftest import WORDS, tiny_bert

EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def bare_student(tmp_path_factory) -> str:
    """A tiny 3-label classifier saved as docs/distillation.md used to show: the model, no tokenizer."""
    folder = tmp_path_factory.mktemp("bare") / "student"
    tiny_bert(num_labels=3, layers=1).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def data(tiny_csv) -> dict:
    return dict(source=tiny_csv, text_column="review", label_column="sentiment", test_size=12, val_size=12)


def export(model: str, out: Path, *extra: str, data: dict | None = None) -> None:
    args = ["export", "--model", model, "--output", str(out), "--int8", "false", *extra]
    main([*args, "--data", json.dumps(data)] if data else args)


def left_behind(folder: Path) -> list[str]:
    """Anything an export to ``folder / "out"`` left: the folder itself or a staging sibling."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("out", ".out")))


def test_a_student_saved_without_its_tokenizer_is_refused(bare_student, tmp_path):
    with pytest.raises(ValueError) as refused:
        export(bare_student, tmp_path / "out", "--onnx", "false")
    message = str(refused.value)
    assert message.startswith("model: ") and "holds no tokenizer files" in message
    assert "pass --tokenizer <folder or alias of the tokenizer the model was trained with>" in message
    assert "tokenizer.save_pretrained(dir)" in message
    assert left_behind(tmp_path) == []


def test_the_tokenizer_option_ships_the_full_tokenizer(bare_student, tokenizer_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    export(bare_student, out, "--tokenizer", tokenizer_dir, data=data)
    assert "predictions match the source model on 16 validation/test texts of data" in capsys.readouterr().out
    assert (out / "hf" / "tokenizer.json").is_file() and (out / "onnx" / "tokenizer.json").is_file()
    shipped, original = (
        AutoTokenizer.from_pretrained(out / "hf"),
        AutoTokenizer.from_pretrained(tokenizer_dir),
    )
    assert len(shipped) == len(original) == 30522 and shipped.get_vocab() == original.get_vocab()
    texts = [" ".join(words.split()[:4]) for words in WORDS.values()]
    source = AutoModelForSequenceClassification.from_pretrained(bare_student).eval()
    exported = AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
    with torch.no_grad():
        expected = source(**original(texts, padding=True, return_tensors="pt")).logits
        got = exported(**shipped(texts, padding=True, return_tensors="pt")).logits
    assert torch.equal(expected.argmax(-1), got.argmax(-1)) and torch.allclose(expected, got, atol=1e-5)
    assert unknown_fraction(shipped, texts) == 0.0


def test_the_summary_says_when_no_data_was_given(tiny_teacher_dir, tmp_path):
    result = export_command.export_model(tiny_teacher_dir, str(tmp_path / "out"), onnx=False)
    assert result["checked_texts"] == 8
    assert result["checked_on"] == "8 built-in English sentences (no data given)"
    assert result["hf_text_max_abs_diff"] <= 1e-5


def test_a_trimmed_export_is_checked_on_real_text_with_the_trimmed_tokenizer(
    tiny_teacher_dir, data, tmp_path
):
    out = tmp_path / "out"
    result = export_command.export_model(
        tiny_teacher_dir, str(out), onnx=False, trim_vocabulary=True, data=data
    )
    assert result["vocabulary"] < 2100 and result["checked_texts"] == 16
    assert len(AutoTokenizer.from_pretrained(out / "hf")) == result["vocabulary"]


@pytest.mark.parametrize("given", ["folder", "option"])
def test_a_tokenizer_bigger_than_the_embeddings_is_refused(given, tokenizer_dir, tmp_path):
    config = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    config.intermediate_size, config.num_labels = 64, 3
    folder = tmp_path / "small_vocabulary"
    BertForSequenceClassification(config).save_pretrained(folder)
    extra = ["--tokenizer", tokenizer_dir] if given == "option" else []
    if given == "folder":
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    with pytest.raises(ValueError) as refused:
        export(str(folder), tmp_path / "out", "--onnx", "false", *extra)
    field = "tokenizer: " if given == "option" else "model: "
    assert str(refused.value).startswith(field)
    assert "30,522 tokens but the model has 1,000 embedding rows" in str(refused.value)
    assert "pass --tokenizer" in str(refused.value)
    assert left_behind(tmp_path) == []


def test_a_saved_made_up_tokenizer_is_refused(bare_student, tmp_path):
    folder = tmp_path / "student"
    shutil.copytree(bare_student, folder)
    AutoTokenizer.from_pretrained(bare_student).save_pretrained(folder)  # the 5 tokens transformers made up
    with pytest.raises(ValueError, match=r"^model: .* has 5 tokens, fewer than half .*pass --tokenizer"):
        export(str(folder), tmp_path / "out", "--onnx", "false")
    assert left_behind(tmp_path) == []


def test_a_tokenizer_that_reads_text_as_unknown_is_refused(bare_student):
    made_up = AutoTokenizer.from_pretrained(bare_student)
    with pytest.raises(
        ValueError, match=r"^tokenizer: .* reads 100% of the tokens of 8 sentences .*'\[UNK\]'"
    ):
        check_known_tokens(made_up, predictions.SAMPLE_TEXTS, "tokenizer", "8 sentences")


def perturb_words_of_the_data(folder: Path, tokenizer_dir: str) -> None:
    """Changes, in the written file, the embeddings of the data's words that the old check texts lack."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    seen = {i for ids in tokenizer(list(CHECK_TEXTS)).input_ids for i in ids}
    words = " ".join(WORDS.values()).split()
    ids = sorted({i for word in words for i in tokenizer(word, add_special_tokens=False).input_ids} - seen)
    weights = load_file(folder / "model.safetensors")
    weights[EMBEDDINGS][ids] += 3.0 * torch.randn(len(ids), weights[EMBEDDINGS].shape[1])
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def test_an_hf_folder_that_differs_on_real_text_is_refused(
    tiny_teacher_dir, tokenizer_dir, data, tmp_path, monkeypatch
):
    def writer_with_a_bug(model, tokenizer, path, **kwargs):
        result = export_hf(model, tokenizer, path, **kwargs)  # its own check (CHECK_TEXTS) passes
        perturb_words_of_the_data(Path(path), tokenizer_dir)
        return result

    export_hf = export_command.export_hf
    monkeypatch.setattr(export_command, "export_hf", writer_with_a_bug)
    with pytest.raises(
        ValueError, match=r"reloaded with transformers, predicts otherwise .* 16 validation/test"
    ):
        export(tiny_teacher_dir, tmp_path / "out", "--onnx", "false", data=data)
    assert left_behind(tmp_path) == [], "a refused export left its folder or its staging folder"


def test_an_onnx_model_that_differs_on_real_text_is_refused(tiny_teacher_dir, data, tmp_path, monkeypatch):
    run_onnx = predictions.run_onnx
    monkeypatch.setattr(predictions, "run_onnx", lambda file, batch: run_onnx(file, batch)[:, ::-1].copy())
    with pytest.raises(ValueError, match=r"run with onnxruntime, predicts otherwise than the source model"):
        export(tiny_teacher_dir, tmp_path / "out", data=data)
    assert left_behind(tmp_path) == []


def test_a_causal_lm_without_its_tokenizer_is_refused_and_takes_the_option(tmp_path, capsys):
    source = Path(resolve_model_source("tiny-llama"))
    bare = tmp_path / "lm"
    bare.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(source / name, bare / name)
    args = ["export", "--model", str(bare), "--output", str(tmp_path / "out"), "--gguf", "false"]
    with pytest.raises(ValueError, match=r"^model: .* holds no tokenizer files.*pass --tokenizer"):
        main(args)
    assert left_behind(tmp_path) == []
    main([*args, "--tokenizer", "tiny-llama"])
    assert "on 8 built-in English sentences (no data given)" in capsys.readouterr().out
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out" / "hf")) == 1024


def test_differing_predictions_leave_out_ties_and_padding():
    reference = torch.tensor([[1.0, 0.0], [0.5, 0.5 + 1e-6], [2.0, 0.0]])
    other = torch.tensor([[0.0, 1.0], [0.5 + 1e-6, 0.5], [2.0, 0.0]])
    assert differing_predictions(reference, other, tolerance=1e-5) == (1, 3)  # row 1 is a tie
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    flipped = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert differing_predictions(tokens, flipped, 1e-5, mask=torch.tensor([[1, 0]])) == (0, 1)
    with pytest.raises(ValueError, match=r"file, predicts otherwise than the source model on 1 of 3"):
        check_same_predictions(reference, other, "file,", "3 rows", 0.1)

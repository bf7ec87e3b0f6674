import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from compress.commands import main


def test_compress_export_writes_hf_and_onnx_and_refuses_to_overwrite(tiny_teacher_dir, tiny_csv, tmp_path):
    out = tmp_path / "export"
    args = ["export", "--model", tiny_teacher_dir, "--output", str(out), "--int8", "false"]
    data = ["--trim_vocabulary", "true", "--data", f'{{"source": "{tiny_csv}", "text_column": "review", '
            f'"label_column": "sentiment", "test_size": 12, "val_size": 12}}']  # fmt: skip
    main([*args, *data])
    assert sorted(p.name for p in out.iterdir()) == [".compress-output", "hf", "onnx"]
    model = AutoModelForSequenceClassification.from_pretrained(out / "hf")
    assert model.config.vocab_size < 2100  # 18 corpus tokens plus ~2,000 single characters and specials
    with pytest.raises(ValueError, match="exists already"):
        main(args)


def test_trim_vocabulary_needs_data(tiny_teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="trim_vocabulary: needs `data`"):
        main(
            [
                "export",
                "--model",
                tiny_teacher_dir,
                "--output",
                str(tmp_path / "x"),
                "--trim_vocabulary",
                "true",
            ]
        )
    assert not (tmp_path / "x").exists()


def test_a_causal_lm_exports_hf_and_refuses_classifier_formats(tmp_path):
    out = tmp_path / "lm"
    main(["export", "--model", "tiny-llama", "--output", str(out), "--gguf", "false"])
    assert sorted(p.name for p in out.iterdir()) == [".compress-output", "hf"]
    assert AutoModelForCausalLM.from_pretrained(out / "hf").config.num_hidden_layers == 4
    with pytest.raises(ValueError, match="onnx: not available for causal language models"):
        main(["export", "--model", "tiny-llama", "--output", str(tmp_path / "x"), "--onnx", "true"])
    with pytest.raises(
        ValueError, match="gguf_reference: 'no-such' is neither a .gguf file nor a GGUF alias"
    ):
        main(
            [
                "export",
                "--model",
                "tiny-llama",
                "--output",
                str(tmp_path / "x"),
                "--gguf_reference",
                "no-such",
            ]
        )
    assert not (tmp_path / "x").exists()


def test_a_classifier_refuses_gguf(tiny_teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="gguf: .* is a classifier; GGUF"):
        main(["export", "--model", tiny_teacher_dir, "--output", str(tmp_path / "x"), "--gguf", "true"])
    assert not (tmp_path / "x").exists()

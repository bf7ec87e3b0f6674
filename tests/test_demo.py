"""The demo's machinery on the real MiniLM teacher and real data, with tiny limits (slow: ~1 minute)."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.demo import main

pytestmark = pytest.mark.slow

SMALL = [
    "data.max_train_examples=120",
    "data.test_size=64",
    "data.val_size=32",
    "trainer.max_steps=3",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
]


def test_demo_runs_saves_stock_models_and_reuses_finished_stages(tmp_path, capsys):
    main(["--output", str(tmp_path), "--set", *SMALL])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["stage"] for r in results] == ["teacher", "student_kd", "student_ce"]
    teacher, kd, ce = results
    assert teacher["layers"] == 6 and kd["layers"] == ce["layers"] == 3
    assert kd["parameters"] < teacher["parameters"]
    assert kd["train_rows"] == 120 and ce["train_rows"] == teacher["train_rows"] == 30  # 75% transfer rows
    assert "| model | test acc" in (tmp_path / "results.md").read_text()

    # every stage folder is a stock Hugging Face model that plain transformers loads
    folder = tmp_path / "student_kd" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    inputs = AutoTokenizer.from_pretrained(folder)(["a triumph", "a mess"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**inputs).logits.shape == (2, 2)
    assert model.config.id2label == {0: "rotten", 1: "fresh"}

    capsys.readouterr()
    main(["--output", str(tmp_path), "--set", *SMALL])
    out = capsys.readouterr().out
    assert out.count("unchanged, reusing") == 3
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_changed_teacher_config_reruns_the_students(tmp_path, capsys):
    main(["--output", str(tmp_path), "--set", *SMALL])
    capsys.readouterr()
    main(["--output", str(tmp_path), "--set", *SMALL[:-1], "trainer.max_steps=2", SMALL[-1]])
    out = capsys.readouterr().out
    assert out.count("config or inputs changed") == 3

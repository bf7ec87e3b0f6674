"""The real default pipeline (MiniLM teacher, Rotten Tomatoes) with tiny limits: every stage and output.

Slow (a few minutes): the suite's other pipeline test uses random tiny models; this one proves the shipped
configs/pipelines/default.yaml runs end to end on the real teacher and data.
"""

import json
from pathlib import Path

import pytest
import yaml
from transformers import pipeline

from compress.commands.pipeline import run_pipeline

pytestmark = pytest.mark.slow
DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "pipelines" / "default.yaml"


def small(config: dict) -> dict:
    """The default pipeline with a few dozen rows and a few steps per stage."""
    config["data"].update(test_size=64, val_size=32, max_train_examples=120)
    for body in config["stages"].values():
        if "fit" in body:
            trainer = body["fit"].setdefault("trainer", {})
            trainer.update(max_steps=4, max_epochs=1, limit_val_batches=1, enable_progress_bar=False)
            for callback in trainer.get("callbacks", []):
                if callback["class_path"] == "compress.callbacks.StructuredPruning":
                    callback["init_args"].update(start_step=0, end_step=2, num_steps=2)
        if "multitask" in body:
            body["multitask"].update(
                max_steps=2, trainer={"limit_val_batches": 1, "enable_progress_bar": False}
            )
            for task in body["multitask"]["tasks"].values():
                task.update(test_size=32, val_size=16, max_train_examples=40)
        if "report" in body:
            body["report"]["rounds"] = 2
    return config


def test_default_pipeline_end_to_end_with_small_limits(tmp_path):
    config = tmp_path / "default.yaml"
    config.write_text(yaml.safe_dump(small(yaml.safe_load(DEFAULT.read_text())), sort_keys=False))
    rows = run_pipeline(config, tmp_path / "run")
    assert [r["stage"] for r in rows] == ["teacher", "student", "pruned", "adapt", "export", "report"]
    out = tmp_path / "run"
    report = json.loads((out / "report.json").read_text())
    by_name = {m["name"]: m for m in report["models"]}
    teacher, int8 = by_name["teacher"], by_name["export (ONNX int8)"]
    assert int8["size_fraction"] < 0.15  # 3 layers, half the FFN, trimmed vocabulary, int8
    assert int8["parameters"] < teacher["parameters"] / 2
    assert by_name["pruned (3 layers, FFN -70%)"]["parameters"] < by_name["student (3 layers)"]["parameters"]
    classify = pipeline("text-classification", model=str(out / "export" / "hf"))
    assert classify("a triumph")[0]["label"] in ("rotten", "fresh")
    assert {p.name for p in (out / "export" / "adapters").iterdir()} == {"base", "bbc_news", "tweets"}
    assert all(r["reused"] for r in run_pipeline(config, tmp_path / "run"))

"""The tiny pipeline end to end: outputs, a crash mid-stage and its resume, reuse, and config errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import compress.commands.pipeline.fit as fit_stage
from compress.commands.pipeline import load_pipeline, run_pipeline

TINY = Path(__file__).resolve().parents[3] / "configs" / "pipelines" / "tiny.yaml"


class Crash(Callback):
    """Simulates a killed process: raises once the given optimizer step is done."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.at_step:
            raise RuntimeError("simulated crash")


def crash_in(stage: str, at_step: int, monkeypatch) -> None:
    original = fit_stage._with_checkpoints

    def with_crash(config, folder):
        config = original(config, folder)
        if folder.name == stage:
            crash = {"class_path": f"{__name__}.Crash", "init_args": {"at_step": at_step}}
            config["trainer"]["callbacks"].append(crash)
        return config

    monkeypatch.setattr(fit_stage, "_with_checkpoints", with_crash)
    monkeypatch.setattr(fit_stage, "CHECKPOINT_EVERY_N_STEPS", 2)


def test_tiny_pipeline_crash_resume_reuse_and_outputs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_in("pruned", at_step=3, monkeypatch=patch)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_pipeline(TINY, out)
    assert (out / "stages" / "pruned" / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "stages" / "pruned" / "manifest.json").exists()

    rows = {r["stage"]: r for r in run_pipeline(TINY, out)}
    printed = capsys.readouterr().out
    assert "pruned: resuming from" in printed
    assert rows["teacher"]["reused"] and rows["student"]["reused"] and not rows["pruned"]["reused"]
    assert rows["pruned"]["result"]["optimizer_steps"] == 4  # the resumed run finished the schedule
    assert not (out / "stages" / "pruned" / "checkpoints").exists()

    # the layout the issue promises, loadable without this project
    layout = ["export/hf/model.safetensors", "export/onnx/model.onnx", "export/onnx/model.int8.onnx"]
    layout += ["export/adapters/base/config.json", "export/adapters/bbc_news", "report.md", "report.png"]
    for path in layout:
        assert (out / path).exists(), path
    classify = pipeline("text-classification", model=str(out / "export" / "hf"))
    assert classify("a gorgeous, witty film")[0]["label"] in ("rotten", "fresh")
    pruned = AutoModelForSequenceClassification.from_pretrained(out / "stages" / "pruned" / "model")
    assert pruned.config.intermediate_size == 32  # half the FFN channels removed
    report = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher", "student", "pruned", "export (HF)", "export (ONNX int8)"]
    int8 = report["models"][-1]
    assert int8["size_fraction"] < 0.1 and 0 <= int8["accuracy"] <= 1 and int8["latency_b32_ms"] > 0

    # a rerun reuses everything; a changed export setting reruns export and report only
    assert all(r["reused"] for r in run_pipeline(TINY, out))
    changed = yaml.safe_load(TINY.read_text())
    changed["stages"]["export"]["export"]["int8"] = False
    changed["stages"]["report"]["report"]["models"].pop("export (ONNX int8)")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(changed, sort_keys=False))
    rerun = {r["stage"]: r["reused"] for r in run_pipeline(config, out)}
    assert rerun == {
        "teacher": True,
        "student": True,
        "pruned": True,
        "adapt": True,
        "export": False,
        "report": False,
    }
    assert not (out / "export" / "onnx" / "model.int8.onnx").exists()


def test_stage_outputs_are_stock_folders_with_merged_adapters(tmp_path):
    out = tmp_path / "run"
    config = yaml.safe_load(TINY.read_text())
    config["stages"] = {k: config["stages"][k] for k in ("teacher", "student")}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_pipeline(path, out)
    folder = out / "stages" / "student" / "model"
    assert not (folder / "adapter_config.json").exists()  # LoRA merged into a stock folder
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    inputs = AutoTokenizer.from_pretrained(folder)(["fine"], return_tensors="pt")
    assert model(**inputs).logits.shape == (1, 2)
    manifest = json.loads((out / "stages" / "student" / "manifest.json").read_text())
    assert manifest["result"]["zero_fraction"] > 0.3  # gradual magnitude pruning survived the merge
    assert torch.isfinite(model.classifier.weight).all()
    shutil.rmtree(out)


@pytest.mark.parametrize(
    "stages, message",
    [
        ({"a": {"train": {}}}, "stages.a: give exactly one of"),
        ({"a": {"fit": {}, "export": {}}}, "stages.a: give exactly one of"),
        ({"a": {"export": {"model": "{b}"}}}, "stages.a: '{b}' refers to no earlier stage"),
        ({"a": {"fit": {}}, "b": {"export": {"model": "{c}"}}}, r"earlier stages: \['a'\]"),
    ],
)
def test_bad_pipeline_configs_name_the_field(tmp_path, stages, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}))
    with pytest.raises(ValueError, match=message):
        load_pipeline(path)


def test_unknown_top_level_key_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"stage": {}}))
    with pytest.raises(ValueError, match="unknown top-level keys"):
        load_pipeline(path)
    with pytest.raises(FileNotFoundError, match="--config"):
        load_pipeline(tmp_path / "missing.yaml")


def test_output_defaults_to_runs_and_the_config_name():
    assert load_pipeline(TINY).output == Path("runs") / "tiny"


def test_load_stage_then_export(tiny_teacher_dir, tmp_path):
    config = {
        "stages": {
            "teacher": {"load": {"model": tiny_teacher_dir}},
            "export": {"export": {"model": "{teacher}", "onnx": False}},
        }
    }
    path = tmp_path / "load.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    rows = run_pipeline(path, tmp_path / "run")
    assert rows[0]["result"]["layers"] == 4 and not rows[1]["reused"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "export" / "hf")
    assert model.config.num_labels == 3
    assert not (tmp_path / "run" / "export" / "onnx").exists()

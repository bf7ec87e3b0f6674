"""Pipeline reuse decided by content, one run per folder, and outputs kept until replaced.

A small pipeline on tiny local files (a teacher folder, a CSV) is run, its inputs and outputs edited as a
user would between runs, and rerun: each case checks which stages reran and that nothing outside the run's
own outputs changed.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForSequenceClassification

import compress.commands.pipeline.fit as fit_stage
from compress.commands.pipeline import run_pipeline
from compress.commands.pipeline.claim import OutputInUse
from tests.conftest import tiny_bert
from tests.test_bad_inputs import snapshot

TRAINER = {"max_steps": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
           "limit_val_batches": 1, "num_sanity_val_steps": 0}  # fmt: skip


@pytest.fixture
def files(tmp_path, tiny_teacher_dir, tiny_csv) -> Path:
    """The user's own inputs: a teacher folder and a CSV, copied so that the cases can edit them."""
    root = tmp_path / "inputs"
    shutil.copytree(tiny_teacher_dir, root / "teacher")
    shutil.copy(tiny_csv, root / "reviews.csv")
    return root


def write_config(files: Path, tokenizer_dir: str, learning_rate: float = 1e-3) -> Path:
    """load the teacher -> distil a 1-layer student for a step -> export it (HF only)."""
    student = {"class_path": "compress.peft.StudentFromTeacher", "init_args": {"layers": [0]}}
    init = {"teacher": "{teacher}", "student": student, "learning_rate": learning_rate}
    model = {"class_path": "compress.modules.DistillationModule", "init_args": init}
    config = {
        "data": {
            "source": str(files / "reviews.csv"),
            "tokenizer": tokenizer_dir,
            "text_column": "review",
            "label_column": "sentiment",
            "test_size": 12,
            "val_size": 12,
            "batch_size": 8,
            "max_length": 16,
        },  # fmt: skip
        "stages": {
            "teacher": {"load": {"model": str(files / "teacher")}},
            "student": {"fit": {"seed_everything": 0, "model": model, "trainer": TRAINER}},
            "export": {"export": {"model": "{student}", "onnx": False}},
        },
    }
    path = files.parent / f"pipeline_{learning_rate}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def reran(config: Path, out: Path) -> list[str]:
    return [row["stage"] for row in run_pipeline(config, out) if not row["reused"]]


def swap_labels(csv_file: Path) -> None:
    """positive <-> negative in every row: the same size, other content."""
    rows = list(csv.reader(csv_file.open()))
    swap = {"positive": "negative", "negative": "positive"}
    with csv_file.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *[[r[0], swap.get(r[1], r[1]), r[2]] for r in rows[1:]]])


def test_reuse_follows_the_content_of_inputs_and_outputs(files, tokenizer_dir, tmp_path, capsys):
    config, out = write_config(files, tokenizer_dir), tmp_path / "run"
    assert reran(config, out) == ["teacher", "student", "export"]
    assert reran(config, out) == []
    size = (files / "reviews.csv").stat().st_size
    swap_labels(files / "reviews.csv")
    assert (files / "reviews.csv").stat().st_size == size
    assert reran(config, out) == ["student", "export"], "relabelled data must retrain"

    tiny_bert(num_labels=3, seed=1).save_pretrained(files / "teacher")  # another model, same folder
    assert reran(config, out) == ["teacher", "student", "export"]

    shutil.rmtree(out / "export" / "hf")
    capsys.readouterr()
    assert reran(config, out) == ["export"], "a deleted export is written again"
    assert "[pipeline] export: its output" in capsys.readouterr().out
    weights = out / "stages" / "teacher" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # truncated by hand
    # the teacher is loaded again; its copy has the digest the student was trained from, so no retraining
    assert reran(config, out) == ["teacher"]
    assert (
        AutoModelForSequenceClassification.from_pretrained(out / "export" / "hf").config.num_hidden_layers
        == 1
    )


def test_the_same_config_in_two_folders_fingerprints_alike(files, tokenizer_dir, tmp_path):
    config = write_config(files, tokenizer_dir)
    for name in ("a", "b"):
        run_pipeline(config, tmp_path / name)
    for stage in ("teacher", "student", "export"):
        manifests = [read(tmp_path / n / "stages" / stage / "manifest.json") for n in "ab"]
        assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"], stage
        assert manifests[0]["output_digest"] == manifests[1]["output_digest"], stage
    assert reran(config, tmp_path / "b") == []


def test_a_second_run_on_a_held_folder_is_refused_and_a_dead_holder_releases_it(
    files, tokenizer_dir, tmp_path
):
    config, out = write_config(files, tokenizer_dir), tmp_path / "run"
    holder = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from compress.commands.pipeline.claim import claim_output
        with claim_output(Path({str(out)!r})):
            print("held", flush=True)
            time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        with pytest.raises(
            OutputInUse, match=rf"in use by another compress pipeline run \(pid {process.pid} on"
        ):
            run_pipeline(config, out)
        assert not (out / "stages").exists(), "the refused run wrote into the held folder"
    finally:
        os.kill(process.pid, signal.SIGKILL)  # no cleanup: its lock file stays behind
        process.wait()
    assert (out / ".compress-run.lock").is_file()
    assert reran(config, out) == ["teacher", "student", "export"]


def test_a_folder_of_other_files_is_refused_before_anything_runs(files, tokenizer_dir, tmp_path):
    out = tmp_path / "mine"
    (out / "export").mkdir(parents=True)
    (out / "report.md").write_text("my notes")
    (out / "export" / "model.bin").write_bytes(b"my model")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"--output: .*not a compress run .*give a new or empty folder"):
        run_pipeline(write_config(files, tokenizer_dir), out)
    assert snapshot(out) == before


def test_a_changed_stage_killed_before_its_first_checkpoint_keeps_the_previous_output(
    files, tokenizer_dir, tmp_path, monkeypatch
):
    config, out = write_config(files, tokenizer_dir), tmp_path / "run"
    run_pipeline(config, out)
    model = out / "stages" / "student" / "model"
    good = snapshot(model)
    changed = write_config(files, tokenizer_dir, learning_rate=2e-3)
    for attempt in range(2):  # killed twice in a row: the second rerun must not delete the good output
        with monkeypatch.context() as patch:
            patch.setattr(fit_stage, "_undo_start", lambda *a: None)  # kill -9: no cleanup runs
            patch.setattr(fit_stage, "_fit", _killed)
            with pytest.raises(KeyboardInterrupt):
                run_pipeline(changed, out)
        assert snapshot(out / "stages" / ".student.previous" / "model") == good, attempt
    assert reran(config, out) == [], "back to the first config: the set-aside output is put back and reused"
    assert snapshot(model) == good
    assert reran(changed, out) == ["student", "export"]
    assert not (out / "stages" / ".student.previous").exists(), "removed once the replacement is complete"


def _killed(*args):
    raise KeyboardInterrupt("killed before the first checkpoint")

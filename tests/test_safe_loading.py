"""Loading untrusted files: a pickle that would run code is refused by every entry point (the marker file it
would create never appears), the files we write load under the defaults, and the explicit opt-ins work."""

import functools
import json
import pathlib
import pickle
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.callbacks.structured_pruning import StructuredPruning, load_pruned_checkpoint
from compress.commands import main
from compress.commands.export import export_model
from compress.commands.pipeline.fit import run_fit_stage
from compress.commands.pipeline.stages import run_load
from compress.data import TextClassificationDataModule
from compress.export import export_hf
from compress.export.report import Candidate, load_predict
from compress.modules import DistillationModule, TaskModule
from compress.peft import MultiTaskAdapters, StudentFromTeacher
from compress.safe_load import load_pretrained
from tests.conftest import quick_trainer, tiny_bert

FORCE_UNSAFE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # torch's switch that flips an unset weights_only to False


class Bait:
    """Unpickling it touches ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def marker(tmp_path) -> pathlib.Path:
    return tmp_path / "unpickled"


@pytest.fixture
def evil_ckpt(tmp_path, marker) -> str:
    path = tmp_path / "evil.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {}, "bait": Bait(marker)}, path)
    return str(path)


@pytest.fixture
def evil_folder(tmp_path, marker, tokenizer_dir) -> str:
    """A 3-label classifier folder whose only weights file is a malicious ``pytorch_model.bin``."""
    folder = tmp_path / "evil_model"
    tiny_bert(num_labels=3).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"bait": Bait(marker)}, folder / "pytorch_model.bin")
    return str(folder)


def test_the_bait_runs_code_when_unpickled(evil_ckpt, marker):
    torch.load(evil_ckpt, weights_only=False)
    assert marker.exists()


def fit_config(teacher_dir: str, data_kwargs: dict, root: pathlib.Path) -> dict:
    trainer = {"max_steps": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer.update(limit_val_batches=1, num_sanity_val_steps=0, default_root_dir=str(root))
    model = {"class_path": "compress.modules.TaskModule", "init_args": {"model": teacher_dir}}
    return {"model": model, "data": data_kwargs, "trainer": trainer}


# (a) every entry point refuses the pickle


ENTRY_POINTS = {  # entry point -> the field its error names; f: the folder, t: a good teacher folder
    "task": (lambda f, t: TaskModule(f, num_labels=3), "model.model"),
    "recipe": (
        lambda f, t: TaskModule(StudentFromTeacher(source=f, num_hidden_layers=1)),
        "model.model.source",
    ),
    "teacher": (lambda f, t: DistillationModule(teacher=f), "model.teacher"),
    "student": (lambda f, t: DistillationModule(teacher=t, student=f), "model.student"),
    "multitask": (lambda f, t: MultiTaskAdapters.from_folders(f, {"t": t}), "base"),
    "report": (lambda f, t: load_predict(Candidate("pruned", pathlib.Path(f))), "models.pruned"),
    "export": (lambda f, t: export_model(f, str(pathlib.Path(f).parent / "out"), onnx=False), "model"),
    "pipeline-load": (
        lambda f, t: run_load({"model": f}, pathlib.Path(f).parent / "s"),
        "stages.s.load.model",
    ),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_model_folders_with_pickled_weights_are_refused(evil_folder, tiny_teacher_dir, marker, entry):
    load, field = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: .*pytorch_model.bin.*save_pretrained"):
        load(evil_folder, tiny_teacher_dir)
    assert not marker.exists()


def test_config_naming_a_pickled_weights_file_is_refused(tmp_path, marker):
    folder = tmp_path / "named"
    tiny_bert().save_pretrained(folder)  # model.safetensors is there, but the config points elsewhere
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    torch.save({"bait": Bait(marker)}, folder / "adapter_model.bin")
    with pytest.raises(ValueError, match="adapter_model.bin"):
        load_pretrained(AutoModelForSequenceClassification, folder, "model.model")
    assert not marker.exists()


def test_peft_adapter_folder_with_pickled_weights_is_refused(tmp_path, marker):
    base = tiny_bert(num_labels=2, layers=1)
    base.save_pretrained(tmp_path / "base")
    tasks = MultiTaskAdapters(tiny_bert(num_labels=2, layers=1), LoraConfig(r=2, target_modules=["query"]))
    tasks.add_task("t", ["a", "b"])
    adapter = tasks.save_task("t", tmp_path / "t")
    (adapter / "adapter_model.safetensors").unlink()
    torch.save({"bait": Bait(marker)}, adapter / "adapter_model.bin")
    with pytest.raises(FileNotFoundError):
        MultiTaskAdapters.from_folders(tmp_path / "base", {"t": adapter})
    assert not marker.exists()


def test_checkpoint_entry_points_refuse_the_pickle(
    evil_ckpt, marker, tiny_teacher_dir, tiny_data_kwargs, tmp_path, monkeypatch
):
    data = TextClassificationDataModule(**tiny_data_kwargs)
    with pytest.raises(pickle.UnpicklingError):  # Lightning's default (None) is torch's True for local files
        quick_trainer(steps=1).fit(TaskModule(tiny_teacher_dir), datamodule=data, ckpt_path=evil_ckpt)
    monkeypatch.setenv(FORCE_UNSAFE, "1")  # flips that default, not our explicit weights_only=True
    with pytest.raises(pickle.UnpicklingError):
        load_pruned_checkpoint(TaskModule, evil_ckpt, model=tiny_bert(num_labels=3))
    config = fit_config(tiny_teacher_dir, tiny_data_kwargs, tmp_path)
    stage = tmp_path / "stage"
    (stage / "checkpoints").mkdir(parents=True)
    (stage / "running.json").write_text(json.dumps({"fingerprint": "f"}))
    (stage / "checkpoints" / "last.ckpt").write_bytes(pathlib.Path(evil_ckpt).read_bytes())
    refused = r"holds pickled objects besides tensors and plain data, which are not loaded"
    with pytest.raises(ValueError, match=rf"stages.stage: .*{refused}"):
        run_fit_stage(stage, config, [], "f", [stage / "model"])  # the pipeline resumes from its last.ckpt
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=rf"ckpt_path: .*{refused}.*--weights_only false"):
        main(["validate", "--config", str(tmp_path / "fit.yaml"), "--ckpt_path", evil_ckpt])
    assert not marker.exists()

    # (c) the explicit opt-in unpickles (so only for a trusted file)
    with pytest.raises(ValueError, match="StructuredPruning"):  # loaded, then no pruning history in it
        load_pruned_checkpoint(TaskModule, evil_ckpt, weights_only=False, model=tiny_bert(num_labels=3))
    assert marker.exists()


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_the_command_line_refuses_a_pickled_checkpoint_url(
    evil_ckpt, marker, tiny_teacher_dir, tiny_data_kwargs, tmp_path, monkeypatch
):
    """Lightning's unset weights_only unpickles http(s) checkpoints; `compress` sets it to True."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # where torch.hub caches downloads
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = fit_config(tiny_teacher_dir, tiny_data_kwargs, tmp_path)
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{server.server_port}/evil.ckpt"
    validate = ["validate", "--config", str(tmp_path / "fit.yaml"), "--ckpt_path", url]
    try:
        with pytest.raises(pickle.UnpicklingError):
            main(validate)
        assert not marker.exists()
        opt_in = ["--weights_only", "false", "--trainer.default_root_dir", str(tmp_path / "opt_in")]
        with pytest.raises(ValueError, match="of this model missing"):  # (c) unpickled, then no weights in it
            main([*validate, *opt_in])
        assert marker.exists()
    finally:
        server.shutdown()
        server.server_close()


# (b) what we write loads under the defaults; (c) the opt-in for a trusted pickled folder


def test_our_checkpoints_and_exports_load_with_the_safe_defaults(
    tiny_teacher_dir, tiny_data_kwargs, tokenizer_dir, tmp_path
):
    module = DistillationModule(
        teacher=tiny_teacher_dir,
        student=StudentFromTeacher(num_hidden_layers=2),
        adapter=LoraConfig(r=2, target_modules=["query", "value"]),
    )
    pruning = StructuredPruning(head_ratio=0.5, at_step=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    data = TextClassificationDataModule(**tiny_data_kwargs)
    quick_trainer(tmp_path, steps=2, callbacks=[pruning, checkpoint]).fit(module, datamodule=data)
    last = str(tmp_path / "last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 2  # tensors and plain data only
    loaded = load_pruned_checkpoint(DistillationModule, last, teacher=tiny_teacher_dir)
    assert loaded.student.config.num_labels == 3
    resumed = quick_trainer(tmp_path, steps=3, callbacks=[StructuredPruning(head_ratio=0.5, at_step=1)])
    resumed.fit(
        DistillationModule(**dict(module.hparams)), datamodule=data, ckpt_path=last, weights_only=True
    )
    assert resumed.global_step == 3

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    export_hf(tiny_bert(num_labels=3), tokenizer, tmp_path / "hf")  # its own check reloads the folder safely
    assert TaskModule(str(tmp_path / "hf"), num_labels=3).model.config.num_labels == 3


def test_a_trusted_pickled_folder_loads_once_converted_or_passed_as_a_module(tmp_path):
    folder = tmp_path / "legacy"
    tiny_bert(num_labels=3).save_pretrained(folder)
    weights = (folder / "model.safetensors").rename(tmp_path / "weights.safetensors")
    torch.save(load_file(weights), folder / "pytorch_model.bin")  # tensors only: a trusted legacy folder
    with pytest.raises(ValueError, match="pickled weights"):
        TaskModule(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(folder)  # the user's explicit choice
    assert TaskModule(model).model is model
    model.save_pretrained(folder)  # converts once: transformers writes model.safetensors
    assert TaskModule(str(folder)).model.config.num_labels == 3

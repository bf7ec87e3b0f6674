"""The pipeline's non-training stages: load, multitask (adapt), export and report.

Each takes the stage's settings (placeholders already resolved), writes under its output folder and returns
a small result dict for the manifest and the summary table.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.commands.export import export_model
from compress.commands.multitask import adapt_to_tasks
from compress.commands.pipeline.fit import save_stock_folder
from compress.data import TextClassificationDataModule, split_rows
from compress.export.report import Candidate, measure, write_report
from compress.modules.loading import count_parameters, resolve_source
from compress.safe_load import load_pretrained


def run_load(settings: dict, folder: Path) -> dict:
    """Uses an existing fine-tuned model (a folder or an offline alias) as this stage's model."""
    source = settings.get("model") if isinstance(settings, dict) else settings
    if not source:
        raise ValueError(f"stages.{folder.name}.load: give `model: <folder or alias>`.")
    field = f"stages.{folder.name}.load.model"
    path = resolve_source(source, field)
    model = load_pretrained(AutoModelForSequenceClassification, path, field)
    save_stock_folder(model, AutoTokenizer.from_pretrained(path), folder / "model")
    return {
        "parameters": count_parameters(model),
        "layers": model.config.num_hidden_layers,
        "source": str(path),
    }


def run_multitask(settings: dict, folder: Path) -> dict:
    """`compress multitask` with these arguments; its output is this stage's folder."""
    parser = ArgumentParser()
    parser.add_function_arguments(adapt_to_tasks)
    config = parser.parse_object({**settings, "output": str(folder), "overwrite": True})
    init = parser.instantiate_classes(config)
    results = adapt_to_tasks(**init.as_dict())
    return {"tasks": {r["task"]: {"test_acc": r["test_acc"], "test_f1": r["test_f1"]} for r in results}}


def run_export(settings: dict, folder: Path, data: dict) -> dict:
    """The export stage: `compress export` into ``<output>/export``, replacing the previous export."""
    return export_model(**settings, output=str(folder), data=data, overwrite=True)


def run_report(settings: dict, output: Path, data: dict) -> dict:
    """Measures the listed models on the test split and writes report.md/json/png into ``output``."""
    models = settings.get("models") or {}
    if not isinstance(models, dict) or not models:
        raise ValueError("stages.report.report.models: map display names to model folders or .onnx files.")
    candidates = [Candidate(name, Path(path)) for name, path in models.items()]
    for c in candidates:
        if not c.path.exists():
            raise FileNotFoundError(f"stages.report.report.models.{c.name}: {c.path} does not exist.")
    datamodule = TextClassificationDataModule(**data)
    test = split_rows(datamodule.raw, datamodule.hparams)["test"]
    threads = torch.get_num_threads()
    if settings.get("threads"):  # on a busy machine, 2 spinning threads can be 100x slower than 1
        torch.set_num_threads(int(settings["threads"]))
    try:
        rows = measure(
            candidates, test["text"], test["label"], datamodule.hparams.max_length, settings.get("rounds", 10)
        )
        report = write_report(rows, output, settings.get("reference"))  # records the thread count used
    finally:
        torch.set_num_threads(threads)  # the setting is for the measurement, not the rest of the process
    return {"models": {r["name"]: {k: v for k, v in r.items() if k != "path"} for r in report["models"]}}

"""The pipeline's non-training stages: load, prune, multitask (adapt), export and report.

Each takes the stage's settings (placeholders already resolved), writes under its output folder and returns
a small result dict for the manifest and the summary table.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from compress.commands.export import export_model
from compress.commands.multitask import adapt_to_tasks
from compress.commands.pipeline.fit import save_stock_folder
from compress.commands.prune import prune_model
from compress.data import LanguageModelingDataModule, TextClassificationDataModule, split_rows
from compress.export.lm_report import LanguageModel, measure_lms, write_lm_report
from compress.export.report import Candidate, measure, write_report
from compress.modules.loading import count_parameters, resolve_source, task_of
from compress.safe_load import load_pretrained

LANGUAGE_MODELING = "compress.data.LanguageModelingDataModule"


def run_load(settings: dict, folder: Path) -> dict:
    """Uses an existing fine-tuned model (a folder or an offline alias) as this stage's model."""
    source = settings.get("model") if isinstance(settings, dict) else settings
    if not source:
        raise ValueError(f"stages.{folder.name}.load: give `model: <folder or alias>`.")
    field = f"stages.{folder.name}.load.model"
    path = resolve_source(source, field)
    causal = task_of(AutoConfig.from_pretrained(path)) == "causal_lm"
    model = load_pretrained(
        AutoModelForCausalLM if causal else AutoModelForSequenceClassification, path, field
    )
    save_stock_folder(model, AutoTokenizer.from_pretrained(path), folder / "model")
    return {
        "parameters": count_parameters(model),
        "layers": model.config.num_hidden_layers,
        "source": str(path),
    }


def run_prune(settings: dict, folder: Path, data: dict) -> dict:
    """`compress prune` with these settings into ``<stage>/model``; calibration on the shared data."""
    settings = {"data": language_modeling_settings(data, f"stages.{folder.name}.prune"), **settings}
    result = prune_model(**settings, output=str(folder / "model"), overwrite=True)
    return {k: v for k, v in result.items() if k != "settings"}


def language_modeling_settings(data: dict, needed_by: str = "a language-model stage") -> dict:
    """The `LanguageModelingDataModule` settings of the pipeline's shared ``data`` (with its class path)."""
    if data.get("class_path") not in (LANGUAGE_MODELING, "LanguageModelingDataModule"):
        raise ValueError(
            f"data: {needed_by} needs the shared `data: {{class_path: {LANGUAGE_MODELING}, init_args: "
            "{...}}` (a language-model pipeline's prune, fit and report stages read it)"
        )
    return dict(data.get("init_args") or {})


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
    for name, path in models.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"stages.report.report.models.{name}: {path} does not exist.")
    if data.get("class_path"):
        return _language_model_report(settings, models, output, data)
    candidates = [Candidate(name, Path(path)) for name, path in models.items()]
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


def _language_model_report(settings: dict, models: dict, output: Path, data: dict) -> dict:
    """Perplexity, KL, agreement and tokens/s of causal LMs on the test split of the shared data."""
    datamodule = LanguageModelingDataModule(**language_modeling_settings(data))
    datamodule.setup("test")
    batches = list(itertools.islice(datamodule.test_dataloader(), settings.get("eval_batches", 10)))
    candidates = [LanguageModel(name, Path(path)) for name, path in models.items()]
    threads = torch.get_num_threads()
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    try:
        rows, texts = measure_lms(candidates, batches, settings.get("reference"), settings.get("rounds", 5))
        report = write_lm_report(rows, texts, output, settings.get("reference"))
    finally:
        torch.set_num_threads(threads)
    return {"models": {r["name"]: {k: v for k, v in r.items() if k != "path"} for r in report["models"]}}

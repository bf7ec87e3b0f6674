"""The pipeline's non-training stages: load, multitask (adapt), export and report.

Each takes the stage's settings (placeholders already resolved), writes under its output folder and returns
a small result dict for the manifest and the summary table.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.assets import resolve_model_source
from compress.data import TextClassificationDataModule, split_rows
from compress.export import export_hf, export_onnx
from compress.export.report import Candidate, measure, write_report
from compress.modules.loading import count_parameters
from compress.multitask import adapt_to_tasks
from compress.pipeline.fit import save_stock_folder


def run_load(settings: dict, folder: Path) -> dict:
    """Uses an existing fine-tuned model (a folder or an offline alias) as this stage's model."""
    source = settings.get("model") if isinstance(settings, dict) else settings
    if not source:
        raise ValueError(f"stages.{folder.name}.load: give `model: <folder or alias>`.")
    path = resolve_model_source(source)
    model = AutoModelForSequenceClassification.from_pretrained(path)
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
    """Stock HF folder (optionally with a trimmed vocabulary), ONNX (+ int8) and the task adapters."""
    source = Path(settings["model"])
    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    result: dict[str, Any] = {"parameters_before": count_parameters(model)}
    if settings.get("trim_vocabulary", False):
        model, tokenizer = _trim(model, tokenizer, data)
        result["vocabulary"] = model.config.vocab_size
    shutil.rmtree(folder, ignore_errors=True)  # the stage reran: its inputs changed
    hf = export_hf(model, tokenizer, folder / "hf")
    result["hf_max_abs_diff"] = hf.max_abs_diff
    if settings.get("onnx", True):
        onnx = export_onnx(model, tokenizer, folder / "onnx", int8=settings.get("int8", True))
        result.update({"onnx_max_abs_diff": onnx.max_abs_diff, **onnx.extras})
    if settings.get("adapters"):
        adapters = Path(settings["adapters"])
        shutil.copytree(adapters / "adapters", folder / "adapters")
        shutil.copytree(adapters / "base", folder / "adapters" / "base")
    result["parameters"] = count_parameters(model)
    return result


def _trim(model, tokenizer, data: dict):
    """Keeps the tokens the training rows use (plus what is needed to spell out any word)."""
    from compress.export.vocab import trim_vocabulary, used_token_ids

    datamodule = TextClassificationDataModule(**{**data, "tokenizer": tokenizer.name_or_path})
    train = split_rows(datamodule.raw, datamodule.hparams)["train"]
    keep = used_token_ids(tokenizer, train["text"], max_length=datamodule.hparams.max_length)
    print(f"[pipeline] export: vocabulary trimmed to {len(keep):,} of {len(tokenizer):,} tokens")
    return trim_vocabulary(model, tokenizer, keep)


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
    if settings.get("threads"):  # on a busy machine, 2 spinning threads can be 100x slower than 1
        torch.set_num_threads(int(settings["threads"]))
    rows = measure(
        candidates, test["text"], test["label"], datamodule.hparams.max_length, settings.get("rounds", 10)
    )
    report = write_report(rows, output, settings.get("reference"))
    return {"models": {r["name"]: {k: v for k, v in r.items() if k != "path"} for r in report["models"]}}

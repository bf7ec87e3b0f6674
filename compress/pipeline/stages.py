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

from compress.data import TextClassificationDataModule, split_rows
from compress.export import export_hf, export_onnx
from compress.export.folder import atomic_output, check_output
from compress.export.report import Candidate, measure, write_report
from compress.modules.loading import count_parameters, load_teacher, resolve_source
from compress.multitask import adapt_to_tasks
from compress.pipeline.fit import save_stock_folder
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
    """The export stage: `export_model` into ``<output>/export``, replacing the previous export."""
    return export_model(**settings, output=str(folder), data=data, overwrite=True)


def export_model(
    model: str,
    output: str,
    onnx: bool = True,
    int8: bool = True,
    trim_vocabulary: bool = False,
    data: dict | None = None,
    adapters: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Exports a trained model folder: ``hf/`` (stock HF), ``onnx/model.onnx`` (+ ``model.int8.onnx``),
    ``adapters/`` (copied from a `compress multitask` run). The ``compress export`` command.

    Args:
        model: a Hugging Face model folder (e.g. a pipeline stage's ``model/``).
        output: the export folder to create.
        onnx: also write ONNX, checked against onnxruntime.
        int8: with ``onnx``, also write a dynamically quantized int8 ONNX model.
        trim_vocabulary: keep only the tokens the training rows of ``data`` use.
        data: `TextClassificationDataModule` settings whose training rows define the vocabulary.
        adapters: a `compress multitask` output folder (``base/``, ``adapters/<task>/``) to ship along.
        overwrite: replace an existing ``output`` folder.
    """
    out = check_output(output, overwrite, "output")
    if trim_vocabulary and not data:
        raise ValueError(
            "trim_vocabulary: needs `data` (the settings whose training rows define the vocabulary)."
        )
    source = Path(resolve_source(model, "model"))
    hf_model = load_teacher(str(source), "model").eval()  # a fine-tuned classifier, not a random head
    tokenizer = AutoTokenizer.from_pretrained(source)
    result: dict[str, Any] = {"parameters_before": count_parameters(hf_model)}
    if trim_vocabulary:
        hf_model, tokenizer = _trim(hf_model, tokenizer, data)
        result["vocabulary"] = hf_model.config.vocab_size
    with atomic_output(out, overwrite) as staging:  # all or nothing: an interrupted export leaves no folder
        result["hf_max_abs_diff"] = export_hf(hf_model, tokenizer, staging / "hf").max_abs_diff
        if onnx:
            exported = export_onnx(hf_model, tokenizer, staging / "onnx", int8=int8)
            result.update({"onnx_max_abs_diff": exported.max_abs_diff, **exported.extras})
        if adapters:
            shutil.copytree(Path(adapters) / "adapters", staging / "adapters")
            shutil.copytree(Path(adapters) / "base", staging / "adapters" / "base")
    result["parameters"] = count_parameters(hf_model)
    print(f"[export] {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return result


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import auto_cli

    auto_cli(export_model, args=argv, as_positional=False)


def _trim(model, tokenizer, data: dict):
    """Keeps the tokens the training rows use (plus what is needed to spell out any word)."""
    from compress.export.vocab import trim_vocabulary, used_token_ids

    datamodule = TextClassificationDataModule(**{**data, "tokenizer": tokenizer.name_or_path})
    train = split_rows(datamodule.raw, datamodule.hparams)["train"]
    keep = used_token_ids(tokenizer, train["text"], max_length=datamodule.hparams.max_length)
    print(f"[export] vocabulary trimmed to {len(keep):,} of {len(tokenizer):,} tokens")
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

"""A ``fit`` stage: a `compress fit` config run to the end, tested, and saved as a stock HF folder.

The stage folder holds ``stage.yaml`` (what ran), ``checkpoints/last.ckpt`` while it runs, ``model/``
(the result) and ``manifest.json`` (fingerprint and metrics, written last). A rerun with the same
fingerprint reuses the result; an interrupted run with the same fingerprint resumes from its last
checkpoint; anything else starts the stage afresh. A fresh start that fails before its first checkpoint (a
setting, the data or a model refused) leaves no trace: the stage's previous folder is put back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch import LightningModule
from torch import nn

from compress.commands.lightning_cli import CompressCLI
from compress.commands.pipeline.content import digest
from compress.export import export_ready
from compress.export.folder import atomic_output
from compress.modules import DistillationModule
from compress.modules.loading import count_parameters
from compress.safe_load import check_checkpoint_file
from compress.sparsity.l1 import near_zero_fraction

CHECKPOINT_EVERY_N_STEPS = 50


def run_fit_stage(
    folder: Path, config: dict[str, Any], overrides: list[str], fingerprint: str, outputs: list[Path]
) -> dict:
    """Fits, tests and saves one stage (resuming an interrupted run of the same fingerprint); its manifest
    records the digest of ``outputs``. The previous output is kept aside until the new one is complete."""
    resume = _resumable_checkpoint(folder, fingerprint)
    created, previous = _start_afresh(folder, fingerprint) if resume is None else (None, None)
    try:
        cli, fit_seconds = _fit(folder, config, overrides, resume)
    except BaseException:
        if created is not None and not (folder / "checkpoints" / "last.ckpt").is_file():
            _undo_start(folder, created, previous)  # refused before its first checkpoint: leave no trace
        raise
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    model, merged = export_ready(deployable_model(cli.model))  # LoRA merged, sparsity kept
    save_stock_folder(model, cli.datamodule.tokenizer, folder / "model")
    result = {
        **_test_metrics(metrics),
        "parameters": count_parameters(model),
        "layers": model.config.num_hidden_layers,
        "optimizer_steps": cli.trainer.global_step,
        "train_rows": len(cli.datamodule.splits["train"]),
        "fit_seconds": round(fit_seconds, 1),
        "adapters_merged": merged,
        "zero_fraction": near_zero_fraction(_linear_weights(model), tolerance=0.0),
    }
    write_manifest(folder, fingerprint, result, overrides, outputs)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the model folder is the stage's output
    shutil.rmtree(_set_aside(folder), ignore_errors=True)  # the replacement is complete
    return result


def _test_metrics(metrics: dict) -> dict[str, float]:
    """Accuracy and F1 of a classifier; perplexity (and KL, agreement with a teacher) of a causal LM."""
    if "test/acc" in metrics:
        return {"test_acc": float(metrics["test/acc"]), "test_f1": float(metrics["test/f1"])}
    keys = ("perplexity", "teacher_perplexity", "kl", "top1_agreement")
    return {f"test_{key}": float(metrics[f"test/{key}"]) for key in keys if f"test/{key}" in metrics}


def _fit(folder: Path, config: dict[str, Any], overrides: list[str], resume: str | None):
    """Writes ``stage.yaml``, builds its `compress fit` objects and fits; returns the CLI and the time."""
    config_file = folder / "stage.yaml"
    config_file.write_text(yaml.safe_dump(_with_checkpoints(config, folder), sort_keys=False))
    print(f"[pipeline] {folder.name}: compress fit --config {config_file} {' '.join(overrides)}")
    if resume is not None:
        print(f"[pipeline] {folder.name}: resuming from {resume}")
    with warnings.catch_warnings():  # LightningCLI warns that sys.argv (the pipeline's) is not what it parses
        warnings.filterwarnings("ignore", ".*args parameter is intended.*")
        cli = CompressCLI(
            args=["--config", str(config_file), *overrides], run=False, save_config_kwargs={"overwrite": True}
        )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume, weights_only=True)
    return cli, time.perf_counter() - start


class _Parsed(Exception):
    """Stops `_ParseOnly` once the config is parsed and checked (before seeding or building anything)."""


class _ParseOnly(CompressCLI):
    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed


def check_fit_settings(name: str, config: dict[str, Any], overrides: list[str]) -> None:
    """Parses a fit stage's config (keys, types, required settings) without building anything, so that a
    mistake in a late stage fails before the first stage trains."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*args parameter is intended.*")
        config_file = Path(tmp) / "stage.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        try:
            _ParseOnly(
                args=["--config", str(config_file), *overrides],
                run=False,
                parser_kwargs={"exit_on_error": False},
            )
        except _Parsed:
            return
        except ArgumentError as err:
            raise ValueError(f"stages.{name}.fit: {_readable(err)}") from err


def _readable(err: ArgumentError) -> str:
    """jsonargparse nests a setting's error under each class it belongs to (``Parser key "data": ...
    Parser key "batch_size": Expected ...``): lead with the dotted setting and the innermost complaint."""
    text = str(err)
    keys = re.findall(r'Parser key "([^"]+)"', text)
    expected = re.findall(r"Expected [^\n]*", text)
    if len(keys) > 1 and expected:
        return f"{'.'.join(keys)}: {expected[0].strip()} (parser: {text})"
    return text


def read_manifest(folder: Path) -> dict:
    manifest = folder / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def write_manifest(
    folder: Path, fingerprint: str, result: dict, overrides: list[str] | None = None, outputs: list[Path] = ()
) -> str | None:
    """Written last: the fingerprint, the result and the digest of the stage's ``outputs`` as written;
    returns that digest."""
    manifest = {"fingerprint": fingerprint, "overrides": overrides or [], "result": result,
                "output_digest": digest(outputs)}  # fmt: skip
    text = json.dumps(manifest, indent=2)
    (folder / "manifest.json").write_text(text + "\n")
    (folder / "running.json").unlink(missing_ok=True)
    return manifest["output_digest"]


def _resumable_checkpoint(folder: Path, fingerprint: str) -> str | None:
    running = folder / "running.json"
    last = folder / "checkpoints" / "last.ckpt"
    if (
        running.is_file()
        and json.loads(running.read_text()).get("fingerprint") == fingerprint
        and last.is_file()
    ):
        fix = "delete it to run the stage again from its start"
        check_checkpoint_file(last, f"stages.{folder.name}", fix)  # damaged (e.g. killed while written)?
        return str(last)
    return None


def _start_afresh(folder: Path, fingerprint: str) -> tuple[Path, Path | None]:
    """An empty stage folder; a complete one (it has a manifest) is set aside until the new run is complete.

    An incomplete one (a run killed before its first checkpoint) is deleted, and what was set aside before
    it stays. Returns the topmost folder created (the run folder on a first run) and the set-aside folder.
    """
    previous = _set_aside(folder)
    if (folder / "manifest.json").is_file():
        print(f"[pipeline] {folder.name}: config or inputs changed, replacing {folder}")
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(folder, previous)
    elif folder.exists():
        shutil.rmtree(folder)
    previous = previous if previous.exists() else None
    created = [p for p in (folder, *folder.parents) if not p.exists()][-1]
    folder.mkdir(parents=True)
    (folder / "running.json").write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    return created, previous


def restore_set_aside(folder: Path, fingerprint: str) -> None:
    """Puts a set-aside output back when its fingerprint is the one asked for again (a changed stage was
    interrupted before it completed, and the config was changed back)."""
    previous = _set_aside(folder)
    if read_manifest(previous).get("fingerprint") == fingerprint and not (folder / "manifest.json").exists():
        print(f"[pipeline] {folder.name}: the output set aside at {previous} matches; putting it back")
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(previous, folder)


def _set_aside(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.previous")


def _undo_start(folder: Path, created: Path, previous: Path | None) -> None:
    """Back to how things were before `_start_afresh`."""
    shutil.rmtree(created)
    if previous is not None:
        os.rename(previous, folder)


def _with_checkpoints(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The stage's config with its root folder and a `last.ckpt` every few steps, for resuming."""
    trainer = dict(config.get("trainer") or {})
    trainer["default_root_dir"] = str(folder)
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(folder / "checkpoints"),
            "save_last": True,
            "save_top_k": 0,
            "every_n_train_steps": CHECKPOINT_EVERY_N_STEPS,
        },
    }
    trainer["callbacks"] = [*(trainer.get("callbacks") or []), checkpoint]
    return {**config, "trainer": trainer}


def deployable_model(module: LightningModule) -> nn.Module:
    """The model a module trains: the student of a distillation, else the task model."""
    return module.student if isinstance(module, DistillationModule) else module.model


def _linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def save_stock_folder(model: nn.Module, tokenizer, folder: Path) -> None:
    """Writes a stock HF folder (safetensors, config, tokenizer) atomically, replacing ``folder``."""
    with atomic_output(folder, overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

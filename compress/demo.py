"""``compress demo``: fine-tune the teacher, distil a 3-layer student, train a CE-only baseline, compare.

Each stage runs a YAML of ``configs/demo/`` through the CLI and saves its model under
``<output>/<stage>/model`` with a manifest; a rerun skips a stage whose config and inputs are unchanged.

Example:
    compress demo --output runs/demo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

from lightning.pytorch import LightningModule
from torch import nn

from compress.cli import CompressCLI
from compress.modules import DistillationModule
from compress.modules.loading import count_parameters

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "demo"
STAGES = (  # (name, config, what it is)
    ("teacher", "teacher.yaml", "teacher: MiniLM-L6 fine-tuned (6 layers)"),
    ("student_kd", "distill.yaml", "student: 3 layers, KD on labelled + transfer rows"),
    ("student_ce", "student_ce.yaml", "student: 3 layers, CE on labelled rows only"),
)
DEFAULT_OUTPUT = "runs/demo"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="compress demo", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="folder for models, logs and results")
    parser.add_argument("--configs", default=str(CONFIGS), help="folder with teacher/distill/student_ce YAML")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="CLI overrides applied to every stage, e.g. --set data.max_train_examples=400",
    )
    args = parser.parse_args(argv)
    results = run_demo(Path(args.output), Path(args.configs), [f"--{kv}" for kv in args.set])
    table = results_table(results)
    print("\n" + table)
    (Path(args.output) / "results.md").write_text(table + "\n")
    (Path(args.output) / "results.json").write_text(json.dumps(results, indent=2))


def run_demo(output: Path, configs: Path, overrides: list[str]) -> list[dict]:
    results, upstream = [], ""
    for name, config_file, title in STAGES:
        # The configs name their folders under runs/demo/; a run elsewhere rewrites that prefix.
        config_text = (configs / config_file).read_text().replace(DEFAULT_OUTPUT + "/", f"{output}/")
        fingerprint = _fingerprint(config_text, overrides, upstream)
        result = run_stage(output / name, config_text, overrides, fingerprint)
        results.append({"stage": name, "title": title, **result})
        if name == "teacher":
            upstream = fingerprint  # the students depend on the teacher
    return results


def run_stage(stage_dir: Path, config_text: str, overrides: list[str], fingerprint: str) -> dict:
    """Fits, tests and saves one stage, or returns its saved result when nothing changed."""
    manifest = stage_dir / "manifest.json"
    saved = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if saved.get("fingerprint") == fingerprint:
        print(f"[demo] {stage_dir.name}: unchanged, reusing {stage_dir / 'model'}")
        return saved["result"]
    if stage_dir.exists():
        print(f"[demo] {stage_dir.name}: config or inputs changed, replacing {stage_dir}")
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    config = stage_dir / "config.yaml"
    config.write_text(config_text)
    print(f"[demo] {stage_dir.name}: compress fit --config {config} {' '.join(overrides)}")
    cli = CompressCLI(args=["--config", str(config), *overrides], run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    model = deployable_model(cli.model)
    _save_model(model, cli.datamodule.tokenizer, stage_dir / "model")
    result = {
        "test_acc": float(metrics["test/acc"]),
        "test_f1": float(metrics["test/f1"]),
        "parameters": count_parameters(model),
        "layers": model.config.num_hidden_layers,
        "optimizer_steps": cli.trainer.global_step,
        "train_rows": len(cli.datamodule.splits["train"]),
        "fit_seconds": round(fit_seconds, 1),
    }
    manifest.write_text(
        json.dumps({"fingerprint": fingerprint, "overrides": overrides, "result": result}, indent=2)
    )
    return result


def deployable_model(module: LightningModule) -> nn.Module:
    """The model a module trains: the student of a distillation, else the task model."""
    return module.student if isinstance(module, DistillationModule) else module.model


def results_table(results: list[dict]) -> str:
    teacher_acc = results[0]["test_acc"]
    lines = [
        "| model | test acc | macro-F1 | % of teacher acc | parameters | layers | steps | train rows | "
        "fit time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['title']} | {r['test_acc']:.3f} | {r['test_f1']:.3f} | "
            f"{100 * r['test_acc'] / teacher_acc:.1f} | {r['parameters'] / 1e6:.1f}M | {r['layers']} | "
            f"{r['optimizer_steps']} | {r['train_rows']} | {r['fit_seconds']:.0f} |"
        )
    return "\n".join(lines)


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _save_model(model: nn.Module, tokenizer, folder: Path) -> None:
    """Writes a stock Hugging Face folder (safetensors, config, tokenizer) atomically."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)

"""``compress multitask``: adapt one compressed base to several tasks, an adapter and head per task.

Writes ``<output>/base`` (the base once, a stock Hugging Face folder), ``<output>/adapters/<task>`` (peft
adapter folders with their heads and label names) and ``<output>/results.json``.

Example:
    compress multitask --config configs/multitask/three_tasks.yaml
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jsonargparse import auto_cli
from lightning.pytorch import Trainer, seed_everything
from peft import PeftConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.assets import resolve_model_source
from compress.data import TextClassificationDataModule
from compress.modules import TaskModule
from compress.modules.loading import count_parameters
from compress.peft.multitask import MultiTaskAdapters
from compress.safe_load import load_pretrained


def adapt_to_tasks(
    base: str,
    tasks: dict[str, dict],
    adapter: PeftConfig,
    output: str = "runs/multitask",
    learning_rate: float = 5e-4,
    max_epochs: int = 1,
    max_steps: int = -1,
    trainer: dict | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> list[dict]:
    """Trains one adapter per task on the frozen ``base`` and saves the base once plus each adapter.

    Args:
        base: the shared model: a folder (e.g. the distilled student) or an offline alias.
        tasks: task name -> `TextClassificationDataModule` settings (``tokenizer`` defaults to the base's).
        adapter: the peft config of every task's adapter, e.g. ``peft.LoraConfig(r=8)``.
        output: the run folder.
        learning_rate: AdamW learning rate of the adapters and heads.
        max_epochs: epochs per task.
        max_steps: optimizer steps per task (-1: no limit).
        trainer: further `Trainer` settings (e.g. ``{"accelerator": "gpu"}``).
        overwrite: replace an existing ``output`` folder.
        seed: seed of every task's run.
    """
    out = _fresh_output(Path(output), overwrite)
    base_path = resolve_model_source(base)
    data = {
        name: TextClassificationDataModule(**{"tokenizer": base_path, **settings})
        for name, settings in tasks.items()
    }
    labels = {name: dm.label_names for name, dm in data.items()}  # loads every source: fail before training
    model = load_pretrained(AutoModelForSequenceClassification, base_path, "base")
    model.save_pretrained(out / "base")
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out / "base")
    shared = MultiTaskAdapters(model, adapter)
    results = []
    for name, datamodule in data.items():
        print(f"[multitask] {name}: {len(labels[name])} labels {labels[name]}")
        seed_everything(seed)
        module = TaskModule(shared.add_task(name, labels[name]), learning_rate=learning_rate)
        run = Trainer(
            max_epochs=max_epochs,
            max_steps=max_steps,
            default_root_dir=out / "logs" / name,
            **(trainer or {}),
        )
        run.fit(module, datamodule=datamodule)
        metrics = run.test(module, datamodule=datamodule, verbose=False)[0]
        folder = shared.save_task(name, out / "adapters" / name)
        results.append(
            {
                "task": name,
                "labels": len(labels[name]),
                "test_acc": float(metrics["test/acc"]),
                "test_f1": float(metrics["test/f1"]),
                "trainable": count_parameters(shared.model, trainable_only=True),
                "adapter_bytes": sum(f.stat().st_size for f in folder.iterdir()),
            }
        )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(_table(results, sum(f.stat().st_size for f in (out / "base").iterdir())))
    return results


def _fresh_output(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(
                f"output: {out} exists and is not empty; choose another output or set overwrite=true"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _table(results: list[dict], base_bytes: int) -> str:
    lines = [
        f"\nbase: {base_bytes / 1e6:.1f} MB, shared by every task",
        "| task | labels | test acc | macro-F1 | trainable params | adapter folder |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['task']} | {r['labels']} | {r['test_acc']:.3f} | {r['test_f1']:.3f} | {r['trainable']:,} | "
        f"{r['adapter_bytes'] / 1e6:.2f} MB |"
        for r in results
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "compress multitask") -> None:
    auto_cli(adapt_to_tasks, args=argv, prog=prog)

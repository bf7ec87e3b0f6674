"""``compress multitask``: adapt one compressed base to several tasks, an adapter and head per task.

Writes ``<output>/base`` (the base once, a stock Hugging Face folder), ``<output>/adapters/<task>`` (peft
adapter folders with their heads and label names) and ``<output>/results.json``.

Example:
    compress multitask --config configs/multitask/three_tasks.yaml
"""

from __future__ import annotations

import json
from pathlib import Path

from jsonargparse import auto_cli
from lightning.pytorch import Trainer, seed_everything
from peft import PeftConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.assets import resolve_model_source
from compress.commands.multitask_settings import check_task_settings, check_trainer_keys
from compress.data import TextClassificationDataModule
from compress.export.folder import atomic_output, check_output
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
    out = check_output(output, overwrite or _empty_folder(Path(output)), "output")
    check_task_settings(tasks)
    check_trainer_keys(trainer, "trainer")
    base_path = resolve_model_source(base)
    data = {
        name: TextClassificationDataModule(**{"tokenizer": base_path, **settings})
        for name, settings in tasks.items()
    }
    labels = {name: dm.label_names for name, dm in data.items()}  # loads every source: fail before training
    model = load_pretrained(AutoModelForSequenceClassification, base_path, "base")
    with atomic_output(out, overwrite=True) as staging:  # the previous output stays until this one is whole
        model.save_pretrained(staging / "base")
        AutoTokenizer.from_pretrained(base_path).save_pretrained(staging / "base")
        shared = MultiTaskAdapters(model, adapter)
        train = dict(learning_rate=learning_rate, max_epochs=max_epochs, max_steps=max_steps, seed=seed)
        results = [
            _train_task(shared, name, dm, labels[name], staging, trainer or {}, **train)
            for name, dm in data.items()
        ]
        (staging / "results.json").write_text(json.dumps(results, indent=2))
    print(_table(results, sum(f.stat().st_size for f in (out / "base").iterdir())))
    return results


def _train_task(shared, name, datamodule, labels, out: Path, trainer: dict, learning_rate, max_epochs,
                max_steps, seed) -> dict:  # fmt: skip
    """Trains, tests and saves one task's adapter and head."""
    print(f"[multitask] {name}: {len(labels)} labels {labels}")
    seed_everything(seed)
    module = TaskModule(shared.add_task(name, labels), learning_rate=learning_rate)
    run = Trainer(max_epochs=max_epochs, max_steps=max_steps, default_root_dir=out / "logs" / name, **trainer)
    run.fit(module, datamodule=datamodule)
    metrics = run.test(module, datamodule=datamodule, verbose=False)[0]
    folder = shared.save_task(name, out / "adapters" / name)
    return {
        "task": name,
        "labels": len(labels),
        "test_acc": float(metrics["test/acc"]),
        "test_f1": float(metrics["test/f1"]),
        "trainable": count_parameters(shared.model, trainable_only=True),
        "adapter_bytes": sum(f.stat().st_size for f in folder.iterdir()),
    }


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


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

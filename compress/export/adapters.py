"""One base, many task adapters: a stock HF base folder plus one peft-format folder per adapter.

Layout written by `export_adapters` (the same per-task folders `compress multitask` writes, so
`MultiTaskAdapters.from_folders` reads them back)::

    path/base/          stock HF folder of the shared base, adapters removed (not merged), tokenizer
    path/<task>/        adapter_config.json + adapter_model.safetensors (+ the task's head) + labels.json

Plain peft loads a task with no import of this project::

    base = AutoModelForSequenceClassification.from_pretrained("path/base", num_labels=3,
                                                               ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, "path/topics")

Bottleneck adapters (which peft lacks) are written with `save_bottleneck_adapters` into
``path/<adapter_name>/`` and read back with `load_bottleneck_adapters`.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from peft import LoraConfig, get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
    >>> lora = get_peft_model(model, LoraConfig(target_modules=["query"], task_type="SEQ_CLS"))
    >>> folder = Path(tempfile.mkdtemp()) / "adapters"
    >>> result = export_adapters(lora, folder)
    >>> sorted(p.name for p in folder.iterdir()), result.max_abs_diff <= 1e-5
    (['.compress-output', 'base', 'default'], True)
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForSequenceClassification

from compress.export.folder import atomic_output, check_output
from compress.export.hf import HF_TOLERANCE
from compress.export.prepare import (
    ExportResult,
    accepted_inputs,
    check_batch,
    logits_of,
    make_pruning_permanent,
    max_abs_diff,
)
from compress.peft.bottleneck import (
    bottleneck_adapters,
    load_bottleneck_adapters,
    remove_bottleneck_adapters,
    save_bottleneck_adapters,
)
from compress.peft.multitask import LABELS_FILE, MultiTaskAdapters
from compress.safe_load import load_pretrained

BASE_FOLDER = "base"


def export_adapters(
    model: PeftModel | MultiTaskAdapters | nn.Module,
    path: str | Path,
    tokenizer=None,
    overwrite: bool = False,
    verify: bool = True,
    adapter_name: str = "default",
) -> ExportResult:
    """Writes the shared base and every adapter of ``model`` separately (nothing is merged).

    Args:
        model: a peft model (every adapter is written), a `MultiTaskAdapters` (every task), or a model
            with bottleneck adapters.
        path: the folder to create.
        tokenizer: saved into ``path/base``.
        overwrite: replace an existing folder at ``path``.
        verify: reload base + each adapter from disk and require logits within 1e-5 of the in-memory model.
        adapter_name: folder name of bottleneck adapters (peft adapters keep their own names).

    Raises:
        ValueError: ``path`` exists (without ``overwrite``), a model without adapters, an adapter named
            ``base``, or a failed check.
    """
    check_output(path, overwrite)
    tasks = model.model if isinstance(model, MultiTaskAdapters) else model
    if not isinstance(tasks, PeftModel) and (tasks is None or not bottleneck_adapters(tasks)):
        raise ValueError(
            f"export_adapters: {type(model).__name__} has no adapters; "
            "use export_hf(model, tokenizer, path) for a plain model"
        )
    with atomic_output(path, overwrite) as staging:
        if isinstance(tasks, PeftModel):
            labels = model.labels if isinstance(model, MultiTaskAdapters) else None
            diff = _write_peft(tasks, staging, tokenizer, labels, verify)
        else:
            diff = _write_bottleneck(tasks, staging, tokenizer, adapter_name, verify)
    return ExportResult(Path(path), max_abs_diff=diff)


def _write_base(base: nn.Module, folder: Path, tokenizer) -> None:
    base.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _write_peft(
    model: PeftModel, staging: Path, tokenizer, labels: dict[str, list[str]] | None, verify: bool
) -> float | None:
    names = list(model.peft_config)
    if BASE_FOLDER in names:
        raise ValueError(f"adapter name {BASE_FOLDER!r} clashes with the base folder; rename the adapter")
    active = model.active_adapter
    base = copy.deepcopy(model)
    make_pruning_permanent(base)
    _write_base(base.unload(), staging / BASE_FOLDER, tokenizer)  # unload: adapters removed, not merged
    if labels is None:  # a plain peft model: every adapter shares the model's label names
        id2label = model.config.id2label
        labels = {name: [id2label[i] for i in range(len(id2label))] for name in names}
    for name in names:
        _save_peft_adapter(model, name, staging / name, labels[name])
    if not verify:
        return None
    try:
        return _verify_peft(model, staging, names, tokenizer)
    finally:
        model.set_adapter(active)


def _save_peft_adapter(model: PeftModel, name: str, folder: Path, labels: list[str]) -> None:
    """One adapter as a peft folder (with its head), plus its label names for `MultiTaskAdapters`."""
    scratch = folder.with_name(f".{folder.name}.scratch")
    model.save_pretrained(scratch, selected_adapters=[name])
    written = scratch if name == "default" else scratch / name  # peft nests adapters not named "default"
    (written / LABELS_FILE).write_text(json.dumps(labels))
    written.rename(folder)
    shutil.rmtree(scratch, ignore_errors=True)


def _verify_peft(model: PeftModel, staging: Path, names: list[str], tokenizer) -> float:
    reloaded = MultiTaskAdapters.from_folders(staging / BASE_FOLDER, {name: staging / name for name in names})
    batch = check_batch(tokenizer, vocab_size=model.config.vocab_size, names=accepted_inputs(model))
    worst = 0.0
    for name in names:
        model.set_adapter(name)
        worst = max(worst, _compare(logits_of(model, batch), logits_of(reloaded.use(name), batch), name))
    return worst


def _write_bottleneck(model: nn.Module, staging: Path, tokenizer, name: str, verify: bool) -> float | None:
    if name == BASE_FOLDER:
        raise ValueError(f"adapter_name {BASE_FOLDER!r} clashes with the base folder; choose another name")
    base = remove_bottleneck_adapters(copy.deepcopy(model))
    make_pruning_permanent(base)
    _write_base(base, staging / BASE_FOLDER, tokenizer)
    save_bottleneck_adapters(model, staging / name)
    if not verify:
        return None
    reloaded = load_bottleneck_adapters(
        load_pretrained(AutoModelForSequenceClassification, staging / BASE_FOLDER, BASE_FOLDER),
        staging / name,
    )
    batch = check_batch(tokenizer, vocab_size=model.config.vocab_size, names=accepted_inputs(model))
    return _compare(logits_of(model, batch), logits_of(reloaded, batch), name)


def _compare(expected: torch.Tensor, got: torch.Tensor, name: str) -> float:
    diff = max_abs_diff(expected, got)
    if diff > HF_TOLERANCE:
        raise ValueError(
            f"export check failed: adapter {name!r} reloaded from disk gives logits {diff:.2e} away from the "
            f"in-memory model (tolerance {HF_TOLERANCE:.0e})"
        )
    return diff

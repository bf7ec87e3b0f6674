"""ONNX export with dynamic batch and sequence axes, checked against onnxruntime.

The graph is traced from the module itself (torch's dynamo-based exporter), so weight shapes come from
the tensors, not from ``config``: a head-pruned BERT, whose per-layer head counts no stock config can
describe under transformers 5, exports and runs like any other. Bottleneck adapters are ordinary modules
here and are exported as they are; LoRA/IA3 adapters are merged first (sparsity kept).

The check runs onnxruntime on a batch whose batch size *and* sequence length differ from the export
example (3 × 24 vs 2 × 16), so a shape that was frozen during tracing fails the export instead of a
deployment.

Sparse weights on disk: ONNX initializers are stored densely, zeros included (as in safetensors); int8
(``int8=True``, `compress.export.quantize.quantize_onnx_int8`) stores Linear and embedding weights in a
quarter of the space.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
    >>> ids = torch.randint(0, 100, (2, 8))
    >>> example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    >>> result = export_onnx(model, example, Path(tempfile.mkdtemp()) / "onnx")
    >>> (result.path / ONNX_FILE).is_file(), result.max_abs_diff <= 1e-4
    (True, True)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from compress.export.folder import atomic_output, check_output
from compress.export.onnx_runtime import onnx_session, run_onnx
from compress.export.prepare import (
    Batch,
    ExportResult,
    accepted_inputs,
    check_batch,
    export_ready,
    logits_of,
    max_abs_diff,
)
from compress.export.quantize import measure_onnx_int8, quantize_onnx_int8

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
ONNX_TOLERANCE = 1e-4
# Warns once per process that torchvision (whose ops we never export) is not installed.
REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"
EXPORT_TEXTS = ("an example to trace", "a second, longer example to trace the export with")


class LogitsOnly(nn.Module):
    """Wraps a classifier so the graph has named tensor inputs and exactly one output, ``logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, **{k: v for k, v in given.items() if v is not None}).logits


def export_onnx(
    model: nn.Module,
    example,
    path: str | Path,
    overwrite: bool = False,
    verify: bool = True,
    int8: bool = False,
    opset: int | None = None,
    tolerance: float = ONNX_TOLERANCE,
) -> ExportResult:
    """Writes ``path/model.onnx`` (and the tokenizer, and optionally ``model.int8.onnx``).

    Args:
        model: a sequence classifier (possibly head-pruned, with adapters) returning ``.logits``.
        example: a tokenizer (saved beside the model) or a dict of example tensors, batch and sequence
            length both >= 2 (size-1 axes would be traced as constants).
        path: the folder to create.
        overwrite: replace an existing folder at ``path``.
        verify: run onnxruntime on another batch and sequence size and require logits within ``tolerance``.
        int8: also write a dynamically quantized int8 copy; its logit difference and both file sizes
            are measured into ``result.extras``.
        opset: ONNX opset version (default: the exporter's).
        tolerance: largest accepted logit difference between onnxruntime and torch.

    Raises:
        ValueError: ``path`` exists (without ``overwrite``), a bad example, or a failed check.
    """
    check_output(path, overwrite)
    ready = export_ready(model, allow_bottleneck=True)[0].cpu()  # traced and checked on the CPU, as deployed
    tokenizer = None if isinstance(example, Mapping) else example
    names = accepted_inputs(ready)
    inputs = _example_inputs(example, names)
    result = ExportResult(Path(path))
    with atomic_output(path, overwrite) as staging:
        _trace(ready, inputs, staging / ONNX_FILE, opset)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        batch = _check_batch(tokenizer, ready, inputs)
        if verify:
            result.max_abs_diff = verify_onnx(staging / ONNX_FILE, ready, batch, tolerance)
        if int8:
            quantize_onnx_int8(staging / ONNX_FILE, staging / INT8_FILE)
            result.extras = measure_onnx_int8(staging / ONNX_FILE, staging / INT8_FILE, batch)
    return result


def _example_inputs(example, names: tuple[str, ...]) -> Batch:
    if not isinstance(example, Mapping):
        encoded = example(
            list(EXPORT_TEXTS), padding="max_length", truncation=True, max_length=16, return_tensors="pt"
        )
        return {name: encoded[name] for name in names if name in encoded}
    unknown = sorted(set(example) - set(names))
    if unknown or "input_ids" not in example:
        raise ValueError(
            f"example: keys {sorted(example)} must include input_ids and be among {list(names)}; "
            f"unexpected: {unknown}"
        )
    shape = tuple(example["input_ids"].shape)
    if len(shape) != 2 or min(shape) < 2:
        raise ValueError(
            f"example: input_ids of shape {shape}; pass (batch, sequence) with both >= 2, e.g. (2, 16): "
            "size-1 axes are traced as constants and the export would not take other sizes"
        )
    return {name: example[name] for name in names if name in example}


def _check_batch(tokenizer, model: nn.Module, inputs: Batch) -> Batch:
    """A check batch whose batch size and sequence length both differ from the traced example's."""
    if tokenizer is not None:
        return check_batch(tokenizer, names=list(inputs))  # 3 x 24 vs the traced 2 x 16
    rows, length = inputs["input_ids"].shape
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    return check_batch(
        vocab_size=vocab_size or int(inputs["input_ids"].max()) + 1,
        names=list(inputs),
        batch_size=rows + 1,
        length=length + 8,
    )


def _trace(model: nn.Module, inputs: Batch, file: Path, opset: int | None) -> None:
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), _quiet_logger(REGISTRY_LOGGER):
        # The exporter names each axis once and warns that the repeated names are "not used": harmless.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        program = torch.onnx.export(
            LogitsOnly(model).eval(),
            (),
            kwargs=dict(inputs),
            dynamo=True,
            verbose=False,
            opset_version=opset,
            input_names=list(inputs),
            output_names=["logits"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs},
        )
    # The exporter annotates every node with debug metadata (Python stack traces with this machine's
    # paths, module names): ~2.4 kB per node, 11% of a tiny BERT's file. Deployments need none of it.
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()
    program.save(file)  # initializers go to an external file only above protobuf's 2 GB limit


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def verify_onnx(file: str | Path, model: nn.Module, batch: Batch, tolerance: float = ONNX_TOLERANCE) -> float:
    """Compares onnxruntime's logits for ``file`` with ``model``'s on ``batch``.

    Raises:
        ValueError: the largest logit difference exceeds ``tolerance`` (with the measured value).
    """
    diff = max_abs_diff(logits_of(model, batch), torch.from_numpy(run_onnx(file, batch)))
    if diff > tolerance:
        raise ValueError(
            f"export check failed: onnxruntime's logits for {file} are {diff:.2e} away from torch's "
            f"(tolerance {tolerance:.0e}) on a batch of shape {tuple(batch['input_ids'].shape)}"
        )
    return diff


__all__ = ["export_onnx", "onnx_session", "run_onnx", "verify_onnx"]

"""int8 dynamic quantization: an in-memory model to measure, and an ONNX file to deploy.

Dynamic quantization stores weights as int8 and quantizes activations on the fly per batch, so it
needs no calibration data. Two artefacts, measured rather than assumed:

- `quantize_dynamic_int8`: an in-memory torch model for accuracy and latency measurement. Backends:

  * ``"torch"``: `torch.ao.quantization.quantize_dynamic` (``DynamicQuantizedLinear`` on fbgemm/x86
    kernels). Deprecated in favour of torchao (it warns "will be removed in 2.10") but present and the
    fastest CPU path in torch 2.13. Measured on a random 3-layer, 384-wide BERT, batch 32 × 128, 2
    threads, on a shared 2-core machine (medians, same process): 1.8-2.9x faster than fp32, against
    0.3-1.2x for torchao 0.18's ``Int8DynamicActivationInt8WeightConfig``.
  * ``"torchao"``: `torchao.quantization.quantize_` with ``Int8DynamicActivationInt8WeightConfig``, the
    maintained path. torchao is not a dependency: once installed, transformers imports it in every
    process (slower start-up, warnings). ``pip install torchao`` to use it.
  * ``"auto"``: ``"torch"`` while torch still has it, else ``"torchao"``.

  Only `nn.Linear` layers are quantized; embeddings stay fp32. Such a model cannot be written with
  ``save_pretrained``: deploy the ONNX file instead.
- `quantize_onnx_int8`: onnxruntime's dynamic quantization of an exported ONNX file (MatMul and
  embedding Gather weights to int8, per-channel scales by default): the portable int8 artefact, about a
  quarter of the fp32 file (measured 0.25-0.26). Zeros from pruning stay dense in every format; int8
  just makes each one a byte.

Example:
    >>> import torch
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100)).eval()
    >>> int8 = quantize_dynamic_int8(model)
    >>> repr(int8.bert.encoder.layer[0].intermediate.dense).split("(")[0]
    'DynamicQuantizedLinear'
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from compress.export.onnx_runtime import run_onnx
from compress.export.prepare import Batch, export_ready, max_abs_diff

Backend = Literal["auto", "torch", "torchao"]


def quantize_dynamic_int8(model: nn.Module, backend: Backend = "auto") -> nn.Module:
    """An int8 copy of ``model`` (adapters merged first): Linear weights int8, activations per batch.

    Args:
        model: a classifier, possibly a peft model (merged with sparsity kept) or pruned.
        backend: ``"torch"``, ``"torchao"`` or ``"auto"`` (see the module docstring for measurements).

    Raises:
        ValueError: an unknown backend; ImportError: ``"torchao"`` without torchao installed.
    """
    ready = export_ready(model, allow_bottleneck=True)[0].cpu()  # int8 dynamic kernels are CPU kernels
    if backend == "auto":
        backend = "torch" if _torch_dynamic_available() else "torchao"
    if backend == "torch":
        return _torch_dynamic(ready)
    if backend == "torchao":
        return _torchao_dynamic(ready)
    raise ValueError(f"backend: {backend!r} is not one of 'auto', 'torch', 'torchao'")


def _torch_dynamic_available() -> bool:
    try:
        with _no_deprecation_notices():
            from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_dynamic(model: nn.Module) -> nn.Module:
    with _no_deprecation_notices():
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


@contextmanager
def _no_deprecation_notices() -> Iterator[None]:
    """torch.ao warns on import and on every call; the module docstring records why we use it anyway."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        yield


def _torchao_dynamic(model: nn.Module) -> nn.Module:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as error:
        raise ImportError(
            "backend='torchao' needs torchao: pip install torchao (or use backend='torch')"
        ) from error
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def quantize_onnx_int8(source: str | Path, target: str | Path, per_channel: bool = True) -> Path:
    """Writes an int8 copy of the ONNX file ``source`` to ``target`` with onnxruntime's dynamic quantizer.

    Args:
        source: an fp32 ONNX file (e.g. from `export_onnx`).
        target: the int8 file to write.
        per_channel: one scale per output channel (measured: slightly closer logits, same speed, +0.3%
            size on a 384-wide BERT).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime's optional pre-processing fails symbolic shape inference on torch's dynamo graphs
    # ("Incomplete symbolic shape inference") and changed neither accuracy nor speed when skipped.
    with _without_preprocessing_hint():
        quantize_dynamic(Path(source), Path(target), weight_type=QuantType.QInt8, per_channel=per_channel)
    return Path(target)


def measure_onnx_int8(fp32_file: str | Path, int8_file: str | Path, batch: Batch) -> dict[str, float]:
    """Sizes of both files and the largest logit difference of int8 vs fp32 under onnxruntime."""
    fp32_bytes, int8_bytes = Path(fp32_file).stat().st_size, Path(int8_file).stat().st_size
    fp32, int8 = run_onnx(fp32_file, batch), run_onnx(int8_file, batch)
    diff = max_abs_diff(torch.from_numpy(fp32), torch.from_numpy(int8))
    return {
        "onnx_fp32_bytes": float(fp32_bytes),
        "onnx_int8_bytes": float(int8_bytes),
        "onnx_int8_size_ratio": int8_bytes / fp32_bytes,
        "onnx_int8_max_abs_diff": diff,
    }


class _DropPreprocessingHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _without_preprocessing_hint() -> Iterator[None]:
    """Silences onnxruntime's root-logger hint, and keeps it from configuring the root logger."""
    root, hint = logging.getLogger(), _DropPreprocessingHint()
    # `logging.warning` runs `basicConfig()` when the root logger has no handler: give it one meanwhile.
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)
        if placeholder is not None:
            root.removeHandler(placeholder)

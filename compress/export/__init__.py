"""Export: stock Hugging Face folders, peft adapter folders, ONNX and int8, GGUF for causal LMs (plain
torch, no Lightning).

Every export writes into a temporary folder, checks the result by loading it back, and only then renames
it into place, so a failed or interrupted export leaves nothing behind; an existing folder is refused
unless ``overwrite=True``.

What each format does with zeros from unstructured pruning: safetensors and ONNX store tensors densely
(a zero costs as much as any value); int8 (`quantize_onnx_int8`) stores each weight in one byte. Only
removed structure (layers, heads, FFN channels) or int8 make a folder smaller.
"""

from compress.export.adapters import export_adapters
from compress.export.folder import atomic_output
from compress.export.gguf import GGUFExportResult, export_gguf
from compress.export.hf import export_hf
from compress.export.onnx import export_onnx
from compress.export.prepare import ExportResult, export_ready, make_pruning_permanent
from compress.export.quantize import quantize_dynamic_int8, quantize_onnx_int8
from compress.export.vocab import trim_vocabulary, used_token_ids

__all__ = [
    "ExportResult",
    "GGUFExportResult",
    "atomic_output",
    "export_adapters",
    "export_gguf",
    "export_hf",
    "export_onnx",
    "export_ready",
    "make_pruning_permanent",
    "quantize_dynamic_int8",
    "quantize_onnx_int8",
    "trim_vocabulary",
    "used_token_ids",
]

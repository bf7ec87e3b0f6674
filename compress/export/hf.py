"""A stock Hugging Face folder that plain `transformers` loads, checked by loading it back.

`export_hf` merges adapters (sparsity kept, see `compress.export.prepare`), writes ``config.json``
(with the label names), ``model.safetensors`` and the tokenizer into a temporary folder, reloads it with
`AutoModelForSequenceClassification.from_pretrained` (a causal LM: `AutoModelForCausalLM`) and compares
logits with the in-memory model; only then does the folder appear at ``path``. A failed check raises and
leaves nothing behind. A causal LM's folder also holds ``generation_config.json`` (its own, or one built
from the config's bos/eos/pad ids) and the tokenizer's chat template: `pipeline("text-generation")` and
`model.generate` work from it as they did from the original.

Sparse weights on disk: safetensors stores every tensor densely, so zeros from unstructured pruning cost
as much as any other value (a 90%-sparse weight is as big as a dense one). Generic compression of the
file recovers it (zlib level 6 on a random-normal fp32 weight: 93% / 56% / 14% of the bytes at 0 / 50 /
90% sparsity), but transformers cannot read a compressed file. Only removed structure (fewer layers, heads
or FFN channels) or int8 weights (`compress.export.quantize`: a quarter of fp32) shrink the folder.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    >>> from compress.assets import resolve_model_source
    >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6"))
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=tokenizer.vocab_size))
    >>> folder = Path(tempfile.mkdtemp()) / "hf"
    >>> result = export_hf(model, tokenizer, folder, label_names=["negative", "positive"])
    >>> result.max_abs_diff <= 1e-5, sorted(p.name for p in folder.glob("*.json"))[:2]
    (True, ['config.json', 'tokenizer.json'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
    PreTrainedModel,
)

from compress.export.folder import atomic_output, check_output
from compress.export.prepare import (
    ExportResult,
    accepted_inputs,
    check_batch,
    export_ready,
    is_causal_lm,
    logits_of,
    max_abs_diff,
)
from compress.safe_load import load_pretrained

HF_TOLERANCE = 1e-5


def export_hf(
    model: nn.Module,
    tokenizer,
    path: str | Path,
    overwrite: bool = False,
    verify: bool = True,
    label_names: Sequence[str] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    tolerance: float = HF_TOLERANCE,
) -> ExportResult:
    """Writes ``model`` (adapters merged, sparsity kept) and ``tokenizer`` as a stock HF folder.

    Args:
        model: a transformers sequence classifier or causal LM, or a peft model around one (LoRA/DoRA/IA3
            are merged).
        tokenizer: saved beside the model (`pipeline` needs it); `None` writes the model only.
        path: the folder to create.
        overwrite: replace an existing folder at ``path``.
        verify: reload with plain `transformers` and require logits within ``tolerance``.
        label_names: names of the classes, written as ``id2label``/``label2id``; default: the model's.
        masks: pruning masks by base-weight name, for the LoRA merge (default: the base's zero pattern).
        tolerance: largest accepted logit difference between the reloaded and the in-memory model.

    Raises:
        ValueError: ``path`` exists (without ``overwrite``), adapters that cannot be merged (bottleneck,
            prompt tuning: use `export_adapters`), a model that is not a `PreTrainedModel`, or a failed check.
    """
    check_output(path, overwrite)  # before the (possibly slow) merge
    ready, merged = export_ready(model, masks)
    if not isinstance(ready, PreTrainedModel):
        raise ValueError(
            f"export_hf needs a transformers model (PreTrainedModel), got {type(ready).__name__}; "
            "use export_onnx(model, example_inputs, path) for other modules"
        )
    if label_names is not None:
        _set_labels(ready, label_names)
    if is_causal_lm(ready):
        _set_generation_config(ready)
    batch = check_batch(tokenizer, vocab_size=ready.config.vocab_size, names=accepted_inputs(ready))
    result = ExportResult(Path(path))
    if merged:
        result.merge_max_abs_diff = max_abs_diff(logits_of(model, batch), logits_of(ready, batch))
    with atomic_output(path, overwrite) as staging:
        ready.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if verify:
            result.max_abs_diff = verify_hf(staging, ready, batch, tolerance)
    return result


def verify_hf(
    folder: str | Path, model: nn.Module, batch: dict[str, torch.Tensor], tolerance: float = HF_TOLERANCE
) -> float:
    """Reloads ``folder`` with plain `transformers` and compares its logits with ``model``'s.

    Raises:
        ValueError: the folder does not load, or the largest logit difference exceeds ``tolerance``.
    """
    auto = AutoModelForCausalLM if is_causal_lm(model) else AutoModelForSequenceClassification
    try:
        reloaded = load_pretrained(auto, folder, "export")
    except RuntimeError as error:  # transformers' "size mismatch" report
        raise ValueError(
            f"export check failed: {folder} does not load with transformers ({str(error)[:200]}); "
            "a head-pruned model has per-layer shapes no stock config describes: use export_onnx"
        ) from error
    diff = max_abs_diff(logits_of(model, batch), logits_of(reloaded, batch))
    if diff > tolerance:
        raise ValueError(
            f"export check failed: {folder} reloaded with transformers gives logits {diff:.2e} away from the "
            f"in-memory model (tolerance {tolerance:.0e}); does the config describe the pruned structure? "
            "Head-pruned models cannot be stock HF folders: use export_onnx"
        )
    return diff


def _set_generation_config(model: PreTrainedModel) -> None:
    """Gives a causal LM a generation config when it has none (then ``generate`` knows where to stop)."""
    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig.from_model_config(model.config)


def _set_labels(model: PreTrainedModel, label_names: Sequence[str]) -> None:
    if is_causal_lm(model):
        raise ValueError("label_names: a causal language model has no classes; leave label_names unset")
    if len(label_names) != model.config.num_labels:
        raise ValueError(
            f"label_names: {len(label_names)} names for a model with {model.config.num_labels} labels; "
            "pass one name per class"
        )
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}

"""The written export predicts as the source model does, on real text tokenized by the shipped tokenizer.

`export_hf` and `export_onnx` already compare each written file with the in-memory model, on three short
sentences (`compress.export.prepare.CHECK_TEXTS`). `check_export_predictions` repeats the comparison on
text of the task (a few validation/test rows) or, without any, on `SAMPLE_TEXTS`, ordinary English
sentences: it reloads ``hf/`` from disk, runs ``onnx/model.onnx`` with onnxruntime and requires the same
argmax prediction (the class; for a causal LM the next token at every position) and logits within each
format's tolerance. Words the short sentences never use (most of a vocabulary) are then covered too.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    >>> from compress.assets import resolve_model_source
    >>> from compress.export import export_hf
    >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6"))
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=64)).eval()
    >>> folder = export_hf(model, tokenizer, Path(tempfile.mkdtemp()) / "hf").path
    >>> check_export_predictions(model, tokenizer, SAMPLE_TEXTS, "sample sentences", hf_folder=folder)
    ... # doctest: +ELLIPSIS
    {'checked_texts': 8, 'hf_text_max_abs_diff': ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from compress.export.hf import HF_TOLERANCE
from compress.export.onnx import ONNX_TOLERANCE
from compress.export.onnx_runtime import run_onnx
from compress.export.prepare import Batch, accepted_inputs, check_batch, is_causal_lm, logits_of, max_abs_diff
from compress.safe_load import load_pretrained

# Ordinary English of several registers and lengths, for exports given no data of their task.
SAMPLE_TEXTS = (
    "The film was wonderful, and the cast was even better than I expected.",
    "I would not recommend this restaurant to anyone.",
    "Shares rose sharply after the company reported record profits for the third quarter.",
    "The match was cancelled because of heavy rain.",
    "She thanked her friends for the lovely birthday surprise.",
    "The new phone is fast, but its battery life is disappointing.",
    "Scientists have discovered a new species of frog in the rainforest.",
    "What time does the next train to London leave?",
)


def text_batch(tokenizer, texts: Sequence[str], names: Sequence[str], max_length: int = 128) -> Batch:
    """``texts`` tokenized and padded to the longest of them (at most ``max_length`` tokens)."""
    longest = max(
        len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length).input_ids
    )
    return check_batch(tokenizer, texts, length=max(longest, 2), names=names)


def check_export_predictions(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    origin: str,
    hf_folder: str | Path | None = None,
    onnx_file: str | Path | None = None,
    max_length: int = 128,
) -> dict[str, float | int]:
    """Requires the written ``hf_folder`` (reloaded from disk) and ``onnx_file`` to predict as ``model``.

    Args:
        model: the model in torch that was exported (a plain transformers model, adapters merged).
        tokenizer: the tokenizer that is shipped with the export.
        texts: real text of the task, or `SAMPLE_TEXTS`.
        origin: where ``texts`` come from, for errors (e.g. "16 validation/test texts of data").
        hf_folder: a stock HF folder written from ``model``.
        onnx_file: an ONNX file written from ``model``.
        max_length: longest tokenized text, in tokens.

    Returns:
        ``checked_texts`` and the largest logit difference of each format checked.

    Raises:
        ValueError: a prediction differs, or logits are further apart than the format's tolerance.
    """
    batch = text_batch(tokenizer, texts, accepted_inputs(model), max_length)
    reference = logits_of(model, batch)
    mask = batch.get("attention_mask") if is_causal_lm(model) else None
    result: dict[str, float | int] = {"checked_texts": len(texts)}
    if hf_folder is not None:
        auto = AutoModelForCausalLM if is_causal_lm(model) else AutoModelForSequenceClassification
        logits = logits_of(load_pretrained(auto, hf_folder, "export"), batch)
        what = f"{hf_folder}, reloaded with transformers,"
        result["hf_text_max_abs_diff"] = check_same_predictions(
            reference, logits, what, origin, HF_TOLERANCE, mask
        )
    if onnx_file is not None:
        logits = torch.from_numpy(run_onnx(onnx_file, batch))
        what = f"{onnx_file}, run with onnxruntime,"
        result["onnx_text_max_abs_diff"] = check_same_predictions(
            reference, logits, what, origin, ONNX_TOLERANCE, mask
        )
    return result


def check_same_predictions(
    reference: torch.Tensor,
    logits: torch.Tensor,
    what: str,
    origin: str,
    tolerance: float,
    mask: torch.Tensor | None = None,
) -> float:
    """The largest logit difference; raises if it exceeds ``tolerance`` or an argmax prediction differs.

    A prediction whose two best reference logits are within ``2 * tolerance`` is a tie at the check's
    precision and may flip without counting; with logits within ``tolerance`` only such ties can flip, so
    the count of differing predictions is what the error reports.

    Args:
        reference: logits of the source model, ``(rows, classes)`` or ``(rows, positions, vocabulary)``.
        logits: the export's logits on the same batch.
        what: the file checked, for the error.
        origin: where the texts come from, for the error.
        tolerance: the largest accepted logit difference.
        mask: ``(rows, positions)``, 0 where a position is padding (causal LMs: not a prediction).
    """
    diff = max_abs_diff(reference, logits)
    differing, total = differing_predictions(reference, logits, tolerance, mask)
    if differing or diff > tolerance:
        raise ValueError(
            f"export check failed: {what} predicts otherwise than the source model on {differing} of "
            f"{total} predictions over {origin} (logits {diff:.2e} apart, tolerance {tolerance:.0e}); the "
            "written files do not hold the model that was exported, so nothing was written. Does the "
            "config describe the pruned structure? A head-pruned model ships as ONNX only (export_onnx)"
        )
    return diff


def differing_predictions(
    reference: torch.Tensor, logits: torch.Tensor, tolerance: float, mask: torch.Tensor | None = None
) -> tuple[int, int]:
    """(differing, total) argmax predictions; padded positions and ties within ``2 * tolerance`` left out."""
    counted = torch.ones(reference.shape[:-1], dtype=torch.bool) if mask is None else mask.bool()
    if reference.shape[-1] < 2:  # one output (a regression head): no class to predict
        return 0, int(counted.sum())
    top2 = reference.float().topk(2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) > 2 * tolerance
    flipped = (reference.argmax(-1) != logits.argmax(-1)) & decided & counted
    return int(flipped.sum()), int(counted.sum())

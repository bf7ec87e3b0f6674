"""``compress prune``: a causal LM pruned in depth, width and/or one-shot sparsity, saved as a stock folder.

Structure first (`prune_llm`: blocks, FFN channels, query groups or heads, hidden channels, by calibration
importance), then one-shot sparsity (`prune_oneshot`: Wanda, SparseGPT or magnitude), both on calibration
blocks of the training split of ``data``; held-out perplexity before and after, on its validation split.
The folder holds the model (safetensors), its tokenizer and ``pruning.json`` (settings, parameters,
sparsity, perplexities, seconds). Recover it by distillation from the unpruned model with
``configs/examples/recover_smollm2.yaml`` (``KeepSparsity`` keeps the one-shot zeros).

Example:
    compress prune --model smollm2-135m --output runs/pruned --remove_layers 10
    compress prune --model smollm2-135m --output runs/sparse --method wanda --pattern 2:4
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from jsonargparse import auto_cli
from transformers import AutoConfig, AutoModelForCausalLM

from compress.data import LanguageModelingDataModule
from compress.export.folder import atomic_output, check_holds_no_input, check_output
from compress.modules.loading import count_parameters, resolve_source, task_of
from compress.sparsity.llm import prune_llm, prune_oneshot
from compress.sparsity.llm.oneshot import oneshot_settings
from compress.sparsity.llm.perplexity import perplexity
from compress.sparsity.magnitude import sparsity_of

DEFAULT_DATA = {
    "source": "bbc_news",
    "block_size": 256,
    "max_train_documents": 400,
    "max_eval_documents": 100,
}


def main(argv: list[str] | None = None, prog: str = "compress prune") -> None:
    auto_cli(prune_model, args=argv, as_positional=False, prog=prog)


def prune_model(
    model: str,
    output: str,
    data: dict | None = None,
    num_sequences: int = 128,
    remove_layers: int = 0,
    layers: list[int] | None = None,
    ffn_ratio: float = 0.0,
    head_ratio: float = 0.0,
    head_unit: str = "groups",
    hidden_ratio: float = 0.0,
    block_importance: str = "influence",
    method: str | None = None,
    sparsity: float | None = None,
    pattern: str | None = None,
    eval_batches: int = 8,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prunes a causal LM folder or alias and writes the smaller model to ``output``.

    Args:
        model: a causal LM folder or offline alias (``smollm2-135m``, ``tiny-llama``).
        output: the folder to create.
        data: `LanguageModelingDataModule` settings for calibration (training split) and perplexity
            (validation split); default BBC News in blocks of 256 tokens, the model's own tokenizer.
        num_sequences: calibration blocks.
        remove_layers: the number of least important decoder blocks to remove.
        layers: the decoder blocks to remove, instead of ``remove_layers``.
        ffn_ratio: fraction of FFN channels removed from every layer.
        head_ratio: fraction of key/value groups (``head_unit=groups``) or of query heads per group
            (``heads``) removed from every layer.
        head_unit: ``groups`` or ``heads``.
        hidden_ratio: fraction of hidden channels removed.
        block_importance: ``influence`` (1 - cos) or ``skip_kl``.
        method: one-shot sparsity after the structural pruning: ``wanda``, ``sparsegpt`` or ``magnitude``.
        sparsity: one-shot fraction of each decoder matrix (default 0.5, or 1 - N/M with a pattern).
        pattern: ``N:M`` (``2:4``) for semi-structured sparsity.
        eval_batches: validation batches for the perplexity before and after (0: skip).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        overwrite: replace an existing ``output`` folder.
    """
    source = Path(resolve_source(model, "model"))
    _check_model(source, model)
    out = _check_output(output, overwrite, source)
    structural = dict(
        remove_layers=remove_layers, layers=layers, ffn_ratio=ffn_ratio, head_ratio=head_ratio,
        head_unit=head_unit, hidden_ratio=hidden_ratio, block_importance=block_importance,
    )  # fmt: skip
    if method is not None:
        oneshot_settings(method, sparsity, pattern, 128, 0.01)  # refused now, not after the structural step
    if not (remove_layers or layers or ffn_ratio or head_ratio or hidden_ratio or method):
        raise ValueError(
            "Nothing to prune: set remove_layers/layers, ffn_ratio, head_ratio, hidden_ratio or method."
        )
    datamodule = LanguageModelingDataModule(**{**DEFAULT_DATA, "tokenizer": str(source), **(data or {})})
    datamodule.setup("fit")
    lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(_device(device)).eval()
    result: dict[str, Any] = {"model": model, "parameters_before": count_parameters(lm)}
    result["perplexity_before"] = _perplexity(lm, datamodule, eval_batches)
    start = time.perf_counter()
    if any(structural[k] for k in ("remove_layers", "layers", "ffn_ratio", "head_ratio", "hidden_ratio")):
        prune_llm(lm, datamodule, num_sequences=num_sequences, **structural)
        result["structure"] = _structure(lm)
    if method is not None:
        masks = prune_oneshot(lm, datamodule, method, sparsity, pattern, num_sequences=num_sequences)
        result.update(method=method, pattern=pattern, sparsity=round(sparsity_of(masks), 6))
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["parameters"] = count_parameters(lm)
    result["perplexity"] = _perplexity(lm, datamodule, eval_batches)
    result["settings"] = {**structural, "num_sequences": num_sequences, "data": data or {}}
    with atomic_output(out, overwrite) as staging:  # all or nothing
        lm.save_pretrained(staging)
        datamodule.tokenizer.save_pretrained(staging)
        (staging / "pruning.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[prune] {out}: {_summary(result)}")
    return result


def _check_model(source: Path, given: str) -> None:
    if task_of(AutoConfig.from_pretrained(source)) != "causal_lm":
        raise ValueError(
            f"model: {given!r} is not a causal language model; `compress prune` prunes Llama-family causal "
            "LMs (for classifiers, use the StructuredPruning or MagnitudePruning callbacks)."
        )


def _check_output(output: str, overwrite: bool, source: Path) -> Path:
    check_holds_no_input(output, {"model": source})
    return check_output(Path(output).resolve(), overwrite, "output")


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _perplexity(lm, datamodule: LanguageModelingDataModule, batches: int) -> float | None:
    if batches <= 0:
        return None
    return round(perplexity(lm, datamodule.val_dataloader(), max_batches=batches), 4)


def _structure(lm) -> dict[str, int]:
    c = lm.config
    keys = (
        "num_hidden_layers",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_size",
    )
    return {key: getattr(c, key) for key in keys}


def _summary(result: dict[str, Any]) -> str:
    parts = [f"parameters {result['parameters_before']:,} -> {result['parameters']:,}"]
    if result.get("sparsity") is not None:
        parts.append(f"{result['method']} sparsity {result['sparsity']:.3f}")
    if result["perplexity"] is not None:
        parts.append(f"held-out perplexity {result['perplexity_before']:.2f} -> {result['perplexity']:.2f}")
    return ", ".join(parts) + f" ({result['seconds']} s)"

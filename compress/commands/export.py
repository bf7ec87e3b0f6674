"""``compress export``: a trained model folder as a stock HF folder, ONNX, int8 ONNX and adapters.

Example:
    compress export --model runs/default/stages/pruned/model --output runs/my_export --int8 true
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from jsonargparse import auto_cli
from transformers import AutoConfig, AutoTokenizer

from compress.data import TextClassificationDataModule, split_rows
from compress.export import export_hf, export_onnx
from compress.export.folder import atomic_output, check_output
from compress.modules.loading import count_parameters, load_teacher, resolve_source, task_of


def main(argv: list[str] | None = None, prog: str = "compress export") -> None:
    auto_cli(export_model, args=argv, as_positional=False, prog=prog)


def export_model(
    model: str,
    output: str,
    onnx: bool = True,
    int8: bool = True,
    trim_vocabulary: bool = False,
    data: dict | None = None,
    adapters: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Exports a trained model folder: ``hf/`` (stock HF), ``onnx/model.onnx`` (+ ``model.int8.onnx``),
    ``adapters/`` (copied from a `compress multitask` run). The ``compress export`` command.

    Args:
        model: a Hugging Face model folder (e.g. a pipeline stage's ``model/``).
        output: the export folder to create.
        onnx: also write ONNX, checked against onnxruntime.
        int8: with ``onnx``, also write a dynamically quantized int8 ONNX model.
        trim_vocabulary: keep only the tokens the training rows of ``data`` use.
        data: `TextClassificationDataModule` settings whose training rows define the vocabulary.
        adapters: a `compress multitask` output folder (``base/``, ``adapters/<task>/``) to ship along.
        overwrite: replace an existing ``output`` folder.
    """
    source = Path(resolve_source(model, "model"))
    if task_of(AutoConfig.from_pretrained(source)) == "causal_lm":
        raise ValueError(
            f"model: {model!r} is a causal language model; `compress export` writes classifiers only so far "
            "(causal-LM export, with GGUF, is planned): save it with save_pretrained and its tokenizer, as "
            "docs/language-models.md shows"
        )
    out = check_output(output, overwrite, "output")
    if trim_vocabulary and not data:
        raise ValueError(
            "trim_vocabulary: needs `data` (the settings whose training rows define the vocabulary)."
        )
    hf_model = load_teacher(str(source), "model").eval()  # a fine-tuned classifier, not a random head
    tokenizer = AutoTokenizer.from_pretrained(source)
    result: dict[str, Any] = {"parameters_before": count_parameters(hf_model)}
    if trim_vocabulary:
        hf_model, tokenizer = _trim(hf_model, tokenizer, data)
        result["vocabulary"] = hf_model.config.vocab_size
    with atomic_output(out, overwrite) as staging:  # all or nothing: an interrupted export leaves no folder
        result["hf_max_abs_diff"] = export_hf(hf_model, tokenizer, staging / "hf").max_abs_diff
        if onnx:
            exported = export_onnx(hf_model, tokenizer, staging / "onnx", int8=int8)
            result.update({"onnx_max_abs_diff": exported.max_abs_diff, **exported.extras})
        if adapters:
            shutil.copytree(Path(adapters) / "adapters", staging / "adapters")
            shutil.copytree(Path(adapters) / "base", staging / "adapters" / "base")
    result["parameters"] = count_parameters(hf_model)
    print(f"[export] {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return result


def _trim(model, tokenizer, data: dict):
    """Keeps the tokens the training rows use (plus what is needed to spell out any word)."""
    from compress.export.vocab import trim_vocabulary, used_token_ids

    datamodule = TextClassificationDataModule(**{**data, "tokenizer": tokenizer.name_or_path})
    train = split_rows(datamodule.raw, datamodule.hparams)["train"]
    keep = used_token_ids(tokenizer, train["text"], max_length=datamodule.hparams.max_length)
    print(f"[export] vocabulary trimmed to {len(keep):,} of {len(tokenizer):,} tokens")
    return trim_vocabulary(model, tokenizer, keep)

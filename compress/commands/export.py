"""``compress export``: a trained model folder as a stock HF folder, ONNX, int8 ONNX and adapters; a causal
LM as a stock HF folder and GGUF files (f16, q8_0) for llama.cpp.

Example:
    compress export --model runs/default/stages/pruned/model --output runs/my_export --int8 true
    compress export --model runs/llm/stages/recovered/model --output runs/llm_export \
        --gguf_reference smollm2-135m
    compress export --model student --tokenizer minilm-l6 --output runs/student_export  # a bare student

Before anything is written the tokenizer to ship is checked against the model (`shipped_tokenizer`,
`compress.export.tokenizer_fit`): a folder without tokenizer files, or a tokenizer that does not fit the
embeddings or reads real text as unknown tokens, is refused. After writing, the reloaded ``hf/`` and the
ONNX model must predict as the source model on real text (`compress.export.predictions`), else nothing
is left at ``output``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from jsonargparse import auto_cli
from transformers import AutoConfig

from compress.assets import gguf_file_of
from compress.commands.export_inputs import CheckTexts, check_texts, data_settings, shipped_tokenizer
from compress.data import TextClassificationDataModule, split_rows
from compress.export import export_gguf, export_hf, export_onnx
from compress.export.folder import MARKER, atomic_output, check_holds_no_input, check_output
from compress.export.onnx import ONNX_FILE
from compress.export.predictions import check_export_predictions
from compress.export.tokenizer_fit import check_known_tokens, check_tokenizer_size
from compress.modules.loading import count_parameters, load_teacher, resolve_source, task_of


def main(argv: list[str] | None = None, prog: str = "compress export") -> None:
    auto_cli(export_model, args=argv, as_positional=False, prog=prog)


def export_model(
    model: str,
    output: str,
    tokenizer: str | None = None,
    onnx: bool | None = None,
    int8: bool | None = None,
    trim_vocabulary: bool = False,
    data: dict | None = None,
    adapters: str | None = None,
    gguf: bool | None = None,
    gguf_types: list[str] | None = None,
    gguf_reference: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Exports a trained model folder. A classifier: ``hf/`` (stock HF), ``onnx/model.onnx`` (+
    ``model.int8.onnx``), ``adapters/`` (copied from a `compress multitask` run). A causal LM: ``hf/`` and
    ``gguf/model-f16.gguf``, ``gguf/model-q8_0.gguf``. The ``compress export`` command.

    Args:
        model: a Hugging Face model folder (e.g. a pipeline stage's ``model/``).
        output: the export folder to create.
        tokenizer: the tokenizer to ship (a folder or offline alias), for a model folder without one (as
            ``model.save_pretrained(dir)`` alone writes); default: the model folder's own.
        onnx: also write ONNX, checked against onnxruntime (default: yes for classifiers; causal LMs: no).
        int8: with ``onnx``, also write a dynamically quantized int8 ONNX model (default: as ``onnx``).
        trim_vocabulary: keep only the tokens the training rows of ``data`` use (classifiers).
        data: `TextClassificationDataModule` settings whose training rows define the vocabulary and
            whose validation/test texts the export is checked on (default: built-in English sentences).
        adapters: a `compress multitask` output folder (``base/``, ``adapters/<task>/``) to ship along.
        gguf: write GGUF files for llama.cpp (causal LMs only; default: yes for them).
        gguf_types: the GGUF weight types to write, default ``[f16, q8_0]`` (``f32`` also accepted).
        gguf_reference: the original model's GGUF file or alias (e.g. ``smollm2-135m``): its tokenizer
            metadata is copied verbatim when the tokenizer is unchanged.
        overwrite: replace an existing ``output`` folder.
    """
    source = Path(resolve_source(model, "model"))
    inputs = {
        "model": source,
        "tokenizer": _local(tokenizer),
        "adapters": adapters,
        "data.source": _local_file(data),
    }
    check_holds_no_input(output, inputs)
    out = check_output(output, overwrite, "output")
    if task_of(AutoConfig.from_pretrained(source)) == "causal_lm":
        unsupported = {"onnx": onnx, "int8": int8, "trim_vocabulary": trim_vocabulary, "adapters": adapters}
        _refuse_for_causal_lm(source, [name for name, value in unsupported.items() if value])
        return _export_causal_lm(source, tokenizer, out, overwrite, gguf, gguf_types, gguf_reference)
    if gguf or gguf_types or gguf_reference:
        raise ValueError(
            f"gguf: {model!r} is a classifier; GGUF (llama.cpp) holds causal language models only. "
            "Drop gguf, gguf_types and gguf_reference"
        )
    onnx = True if onnx is None else onnx
    int8 = onnx if int8 is None else int8
    if trim_vocabulary and not data:
        raise ValueError(
            "trim_vocabulary: needs `data` (the settings whose training rows define the vocabulary)."
        )
    shipped, field = shipped_tokenizer(source, tokenizer)
    hf_model = load_teacher(str(source), "model").eval()  # a fine-tuned classifier, not a random head
    check_tokenizer_size(shipped, hf_model, field)
    texts = check_texts(data)
    result: dict[str, Any] = {"parameters_before": count_parameters(hf_model)}
    if trim_vocabulary:
        hf_model, shipped = _trim(hf_model, shipped, data)
        result["vocabulary"] = hf_model.config.vocab_size
    check_known_tokens(shipped, texts.texts, field, texts.origin)
    with atomic_output(out, overwrite) as staging:  # all or nothing: an interrupted export leaves no folder
        result["hf_max_abs_diff"] = export_hf(hf_model, shipped, staging / "hf").max_abs_diff
        if onnx:
            exported = export_onnx(hf_model, shipped, staging / "onnx", int8=int8)
            result.update({"onnx_max_abs_diff": exported.max_abs_diff, **exported.extras})
        onnx_file = staging / "onnx" / ONNX_FILE if onnx else None
        result.update(_check_predictions(hf_model, shipped, texts, staging / "hf", onnx_file))
        if adapters:
            shutil.copytree(Path(adapters) / "adapters", staging / "adapters")
            shutil.copytree(Path(adapters) / "base", staging / "adapters" / "base")
    result["parameters"] = count_parameters(hf_model)
    _summary(out, result)
    return result


def _check_predictions(model, tokenizer, texts: CheckTexts, hf_folder: Path, onnx_file: Path | None) -> dict:
    """The written files predict as ``model`` on ``texts``; the result says how many texts, from where."""
    checked = check_export_predictions(
        model, tokenizer, texts.texts, texts.origin, hf_folder, onnx_file, texts.max_length
    )
    return {**checked, "checked_on": texts.origin}


def _summary(out: Path, result: dict) -> None:
    written = ", ".join(sorted(p.name for p in out.iterdir() if p.name != MARKER))
    print(f"[export] {out}: {written}; predictions match the source model on {result['checked_on']}")


def _local(source: str | None) -> str | None:
    """``source`` if it names a local folder (an alias or hub id is no input an output could hold)."""
    return source if source is not None and Path(source).exists() else None


def _local_file(data: dict | None) -> str | None:
    """The data file an export reads (to trim the vocabulary), if ``data`` names one."""
    source = (data or {}).get("source") or (data or {}).get("init_args", {}).get("source")
    return source if isinstance(source, str) and Path(source).exists() else None


def _refuse_for_causal_lm(source: Path, settings: list[str]) -> None:
    if settings:
        raise ValueError(
            f"{settings[0]}: not available for causal language models ({source}); their export is hf/ "
            f"and gguf/. Drop {', '.join(settings)}"
        )


def _export_causal_lm(
    source: Path,
    tokenizer: str | None,
    out: Path,
    overwrite: bool,
    gguf: bool | None,
    gguf_types: list[str] | None,
    gguf_reference: str | None,
) -> dict:
    """``hf/`` and ``gguf/`` for a causal LM, all or nothing."""
    reference = gguf_file_of(gguf_reference) if gguf_reference else None
    shipped, field = shipped_tokenizer(source, tokenizer)
    hf_model = load_teacher(str(source), "model").eval()
    check_tokenizer_size(shipped, hf_model, field)
    texts = check_texts(None)  # `data` of a language-model pipeline holds documents, not check texts
    check_known_tokens(shipped, texts.texts, field, texts.origin)
    result: dict[str, Any] = {"parameters": count_parameters(hf_model)}
    with atomic_output(out, overwrite) as staging:
        result["hf_max_abs_diff"] = export_hf(hf_model, shipped, staging / "hf").max_abs_diff
        result.update(_check_predictions(hf_model, shipped, texts, staging / "hf", None))
        if gguf is not False:
            types = tuple(gguf_types or ("f16", "q8_0"))
            written = export_gguf(hf_model, shipped, staging / "gguf", reference=reference, types=types)
            result.update(written.extras)
    _summary(out, result)
    return result


def _trim(model, tokenizer, data: dict):
    """Keeps the tokens the training rows use (plus what is needed to spell out any word)."""
    from compress.export.vocab import trim_vocabulary, used_token_ids

    datamodule = TextClassificationDataModule(**{**data_settings(data), "tokenizer": tokenizer.name_or_path})
    train = split_rows(datamodule.raw, datamodule.hparams)["train"]
    keep = used_token_ids(tokenizer, train["text"], max_length=datamodule.hparams.max_length)
    print(f"[export] vocabulary trimmed to {len(keep):,} of {len(tokenizer):,} tokens")
    return trim_vocabulary(model, tokenizer, keep)

"""GGUF files (llama.cpp's format) of a Llama-family causal LM, checked by loading them back.

`export_gguf` writes one file per entry of ``types`` (``model-f16.gguf``, ``model-q8_0.gguf``) into a
temporary folder, reloads each with plain `transformers` (``from_pretrained(folder, gguf_file=name)``) and
compares its logits with the in-memory model; only then does the folder appear at ``path``. Tensor names,
hyper-parameter keys and the q/k row permutation follow llama.cpp's ``convert_hf_to_gguf.py``
(`LlamaModel`). Pruned shapes (fewer layers, FFN channels or heads, ``heads * head_dim != hidden_size``, a
hidden size that is not a multiple of 32) are written as they are. Norm weights stay F32; with q8_0 a
matrix whose rows are not a multiple of the 32-value block stays F16, as in llama.cpp's converter.

Tokenizer metadata is copied verbatim from ``reference`` (the original model's GGUF) when the token list is
unchanged; otherwise it is built from the Hugging Face tokenizer (`compress.export.gguf_tokenizer`).

Tolerances are relative: the largest logit difference over the largest |logit| of the in-memory model on
the check texts. Measured (fp32 reference, transformers 5.23, gguf 0.19): f32 0 (bit-exact); f16 4e-4 on
the tiny random Llama, 2e-4 pruned, 9e-4 on SmolLM2-135M-Instruct; q8_0 8e-3, 2e-3 (most matrices F16)
and 2.2e-2. The defaults (`TOLERANCES`: 1e-5, 1e-2, 1e-1) leave about 5-10x room for deeper models. They
do not catch a q/k permutation bug on a random model, whose attention is nearly uniform (a missing
permutation moves the tiny model's logits by 0.8%); with sharper attention (q, k scaled 8x) it moves them
by 85%, against 3e-2 for q8_0 rounding, which is how the tests check it.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> from compress.assets import resolve_model_source
    >>> source = resolve_model_source("tiny-llama")
    >>> model = AutoModelForCausalLM.from_pretrained(source)
    >>> tokenizer = AutoTokenizer.from_pretrained(source)
    >>> folder = Path(tempfile.mkdtemp()) / "gguf"
    >>> result = export_gguf(model, tokenizer, folder, types=("f16",))
    >>> sorted(p.name for p in folder.iterdir()), result.extras["gguf_f16_relative_diff"] < 1e-2
    (['.compress-output', 'model-f16.gguf'], True)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaForCausalLM, MistralForCausalLM

from compress.export.folder import atomic_output, check_output
from compress.export.gguf_tokenizer import Field, tokenizer_fields, verify_tokenizer
from compress.export.prepare import CHECK_TEXTS, ExportResult, export_ready, logits_of, max_abs_diff

Q = gguf.GGMLQuantizationType
FILE_TYPES = {  # accepted `types`: tensor type of the matrices, general.file_type
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
TOLERANCES = {"f32": 1e-5, "f16": 1e-2, "q8_0": 1e-1}  # relative to max |logit|, see the module docstring
T = gguf.MODEL_TENSOR
LAYER_TENSORS = {  # Hugging Face module inside model.layers.<i> -> llama.cpp tensor
    "input_layernorm": T.ATTN_NORM,
    "self_attn.q_proj": T.ATTN_Q,
    "self_attn.k_proj": T.ATTN_K,
    "self_attn.v_proj": T.ATTN_V,
    "self_attn.o_proj": T.ATTN_OUT,
    "post_attention_layernorm": T.FFN_NORM,
    "mlp.gate_proj": T.FFN_GATE,
    "mlp.up_proj": T.FFN_UP,
    "mlp.down_proj": T.FFN_DOWN,
}


@dataclass
class GGUFExportResult(ExportResult):
    """`ExportResult` of `export_gguf`, plus the matrices a quantized type could not hold.

    Args:
        f16_fallbacks: for each entry of ``types``, the tensors written as F16 instead (rows not a multiple
            of the block size, 32 for q8_0); empty for f32 and f16.
    """

    f16_fallbacks: dict[str, list[str]] = field(default_factory=dict)


def export_gguf(
    model: nn.Module,
    tokenizer,
    path: str | Path,
    reference: str | Path | None = None,
    types: Sequence[str] = ("f16", "q8_0"),
    overwrite: bool = False,
    verify: bool = True,
    tolerance: float | Mapping[str, float] | None = None,
) -> GGUFExportResult:
    """Writes ``model`` and ``tokenizer`` as ``path/model-<type>.gguf``, one file per entry of ``types``.

    Args:
        model: a `LlamaForCausalLM` (SmolLM2 is one; Mistral without sliding window too), possibly pruned;
            a peft model around one is merged first (LoRA keeping sparsity, `export_ready`).
        tokenizer: the model's fast tokenizer: vocabulary, merges, special tokens and chat template.
        path: the folder to create.
        reference: a GGUF file of the original model (e.g. the teacher's): its tokenizer metadata is copied
            when the token list is unchanged, its pre-tokenizer name used otherwise.
        types: some of ``"f32"``, ``"f16"``, ``"q8_0"``.
        overwrite: replace an existing folder at ``path``.
        verify: reload every file with plain `transformers`, require its logits within ``tolerance`` and
            the tokenizer it describes to encode the check texts (and a chat) to the same ids.
        tolerance: largest accepted logit difference over the largest |logit|, for every type or by type;
            default `TOLERANCES`.

    Raises:
        ValueError: ``path`` exists (without ``overwrite``), an unknown type, a model that is not a Llama
            causal LM, a tokenizer that cannot be written, or a failed check.
    """
    tolerances = _tolerances(types, tolerance)
    check_output(path, overwrite)  # before the (possibly slow) merge
    ready, merged = export_ready(model)
    _check_llama(ready)
    fields = tokenizer_fields(tokenizer, ready.config.vocab_size, reference)
    inputs = check_inputs(tokenizer)
    expected = [logits_of(ready, batch) for batch in inputs]
    result = GGUFExportResult(Path(path))
    if merged:
        result.merge_max_abs_diff = _largest_diff(model, inputs, expected)
    with atomic_output(path, overwrite) as staging:
        for name in types:
            file = staging / f"model-{name}.gguf"
            result.f16_fallbacks[name] = write_gguf(ready, fields, file, name)
            result.extras[f"gguf_{name}_bytes"] = float(file.stat().st_size)
            result.extras[f"gguf_{name}_f16_fallbacks"] = float(len(result.f16_fallbacks[name]))
            if verify:
                shown = Path(path) / file.name
                if name == types[0]:  # the tokenizer metadata is the same in every file
                    verify_tokenizer(file, tokenizer, shown)
                diff, relative = verify_logits(file, inputs, expected, tolerances[name], shown)
                result.extras[f"gguf_{name}_max_abs_diff"] = diff
                result.extras[f"gguf_{name}_relative_diff"] = relative
    if verify:
        result.max_abs_diff = result.extras[f"gguf_{'f16' if 'f16' in types else types[0]}_max_abs_diff"]
    return result


def _tolerances(types: Sequence[str], tolerance: float | Mapping[str, float] | None) -> dict[str, float]:
    if isinstance(types, str) or not types:
        raise ValueError(f"types: expected a sequence of file types such as ('f16', 'q8_0'), got {types!r}")
    if any(name not in FILE_TYPES for name in types) or len(set(types)) != len(types):
        raise ValueError(
            f"types: {list(types)} has unknown or repeated types; use each of {sorted(FILE_TYPES)} at most "
            "once (for other llama.cpp types, run llama.cpp's llama-quantize on the f16 file)"
        )
    if not isinstance(tolerance, Mapping):
        return {name: TOLERANCES[name] if tolerance is None else float(tolerance) for name in types}
    if set(tolerance) - set(types):
        raise ValueError(f"tolerance: {sorted(set(tolerance) - set(types))} are not in types {list(types)}")
    return {name: float(tolerance.get(name, TOLERANCES[name])) for name in types}


def _check_llama(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if not isinstance(model, (LlamaForCausalLM, MistralForCausalLM)):
        raise ValueError(
            "model: export_gguf writes Llama-family causal LMs (LlamaForCausalLM: Llama, SmolLM2; "
            f"MistralForCausalLM without sliding window), got "
            f"{type(model).__name__} (model_type {getattr(config, 'model_type', None)!r}); "
            "use export_hf or export_onnx for other models"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or getattr(config, "sliding_window", None):
        raise ValueError(
            f"model: rope scaling ({rope}) or a sliding window is not supported by export_gguf (plain RoPE, "
            "full attention only); save the HF folder and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("model: attention/MLP biases are not supported by export_gguf; use export_hf")


def write_gguf(model: LlamaForCausalLM, fields: Sequence[Field], file: Path, file_type: str) -> list[str]:
    """Writes ``model`` and the tokenizer ``fields`` as the GGUF ``file``; returns the F16 fallbacks."""
    matrix_type, llama_file_type = FILE_TYPES[file_type]
    writer = gguf.GGUFWriter(file, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_hyperparameters(writer, model.config, llama_file_type)
    for key, value, value_type, item_type in fields:
        writer.add_key_value(key, value, value_type, sub_type=item_type)
    fallbacks = []
    for name, weight in llama_tensors(model):
        data, tensor_type = encode(weight, matrix_type)
        if weight.ndim == 2 and tensor_type != matrix_type:
            fallbacks.append(name)
        writer.add_tensor(name, data, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return fallbacks


def _add_hyperparameters(writer: gguf.GGUFWriter, config, file_type: int) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(Path(config.name_or_path or "model").name or "model")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)  # llama.cpp's head size when heads * head_dim != hidden_size
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)  # transformers reads head_dim from this one
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def llama_tensors(model: LlamaForCausalLM) -> Iterator[tuple[str, np.ndarray]]:
    """``(llama.cpp name, float32 array)`` of every weight, q and k rows permuted for llama.cpp's RoPE."""
    config, decoder = model.config, model.model
    yield _name(T.TOKEN_EMBD), _array(decoder.embed_tokens.weight)
    for index, layer in enumerate(decoder.layers):
        for module, tensor in LAYER_TENSORS.items():
            weight = layer.get_submodule(module).weight
            if tensor == T.ATTN_Q:
                weight = permute(weight, config.num_attention_heads)
            elif tensor == T.ATTN_K:
                weight = permute(weight, config.num_key_value_heads)
            yield _name(tensor, index), _array(weight)
    yield _name(T.OUTPUT_NORM), _array(decoder.norm.weight)
    head, embeddings = model.get_output_embeddings().weight, decoder.embed_tokens.weight
    if not (head is embeddings or torch.equal(head, embeddings)):
        yield _name(T.OUTPUT), _array(head)  # without it llama.cpp (and transformers) reuse token_embd


def permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order: HF's RoPE rotates the two halves of a head, llama.cpp adjacent pairs."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def encode(weight: np.ndarray, matrix_type: gguf.GGMLQuantizationType) -> tuple[np.ndarray, Any]:
    """The data to write and its type: 1-D (norms) F32, matrices ``matrix_type`` if it fits, else F16."""
    if weight.ndim < 2:
        return weight.astype(np.float32), Q.F32
    try:
        return gguf.quants.quantize(weight, matrix_type), matrix_type
    except gguf.QuantError:  # rows not a multiple of the block size
        return gguf.quants.quantize(weight, Q.F16), Q.F16


def _name(tensor: gguf.MODEL_TENSOR, index: int | None = None) -> str:
    return gguf.TENSOR_NAMES[tensor].format(bid=index) + ".weight"


def _array(weight: torch.Tensor) -> np.ndarray:
    return weight.detach().float().cpu().numpy()


def check_inputs(tokenizer) -> list[dict[str, torch.Tensor]]:
    """One unpadded batch per check text: nothing to mask when comparing logits."""
    encoded = [tokenizer(text, truncation=True, max_length=32, return_tensors="pt") for text in CHECK_TEXTS]
    return [{name: batch[name] for name in ("input_ids", "attention_mask")} for batch in encoded]


def _largest_diff(model: nn.Module, inputs: Sequence[dict], expected: Sequence[torch.Tensor]) -> float:
    return max(
        max_abs_diff(want, logits_of(model, batch)) for want, batch in zip(expected, inputs, strict=True)
    )


def verify_logits(
    file: Path, inputs: Sequence[dict], expected: Sequence[torch.Tensor], tolerance: float, shown: Path
) -> tuple[float, float]:
    """Largest absolute and relative logit difference of ``file`` reloaded by transformers.

    Raises:
        ValueError: the file does not load, or the relative difference exceeds ``tolerance``.
    """
    try:
        reloaded = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ValueError(
            f"export check failed: transformers cannot load {shown} ({str(error)[:200]})"
        ) from error
    diff = _largest_diff(reloaded, inputs, expected)
    relative = diff / max(float(want.abs().max()) for want in expected)
    if relative > tolerance:
        raise ValueError(
            f"export check failed: {shown} reloaded with transformers gives logits {diff:.2e} away from the "
            f"in-memory model ({relative:.2e} of the largest |logit|, tolerance {tolerance:.0e}): a weight "
            "in the wrong place or order, or a type too coarse for this model (pass a larger tolerance)"
        )
    return diff, relative

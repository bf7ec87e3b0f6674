"""One-shot pruning of a Llama-family causal LM from calibration data: Wanda, SparseGPT or magnitude.

`prune_oneshot` prunes, in place, the Linear weights of the decoder layers (attention q/k/v/o, MLP
gate/up/down; never the embeddings, norms or ``lm_head``) one layer at a time, in the order activations
flow, as the reference implementations do: hooks on the layer's Linears gather statistics while the
dense layer runs on every calibration input (per-feature input norms for Wanda, ``H = 2/n · Σ XᵀX`` for
SparseGPT, padding excluded), all its Linears are pruned, and the pruned layer is run again to produce
the next layer's inputs, so each layer is fitted to the pruned layers before it. Magnitude pruning needs
no data: each matrix loses its smallest ``|W|`` (``calibration`` is not read).

``sparsity`` is the fraction of every matrix pruned. With an N:M ``pattern`` the fraction is fixed at
``1 − N/M``: leave ``sparsity`` unset (``None``) or give that same value; unset and unstructured is 0.5.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    >>> ids = torch.randint(0, 64, (8, 16))
    >>> masks = prune_oneshot(model, ids, method="sparsegpt", pattern="2:4", progress=False)
    >>> keep = masks["model.layers.0.mlp.down_proj.weight"]
    >>> weight = model.get_parameter("model.layers.0.mlp.down_proj.weight")
    >>> len(masks), float(keep.float().mean()), bool((weight[~keep] == 0).all())
    (14, 0.5, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.sparsity.llm.calibration import Calibration, calibration_batches
from compress.sparsity.llm.capture import LayerInput, first_layer_inputs, real_tokens, run_layer
from compress.sparsity.llm.decoder import decoder_of
from compress.sparsity.llm.sparsegpt import Hessian, sparsegpt_prune
from compress.sparsity.llm.wanda import InputNorms, wanda_mask
from compress.sparsity.magnitude import magnitude_masks, nm_mask, parse_pattern

Method = Literal["wanda", "sparsegpt", "magnitude"]
METHODS = ("wanda", "sparsegpt", "magnitude")
Statistics = InputNorms | Hessian


@torch.no_grad()
def prune_oneshot(
    model: nn.Module,
    calibration: Calibration,
    method: Method = "wanda",
    sparsity: float | None = None,
    pattern: str | None = None,
    num_sequences: int = 128,
    batch_size: int = 8,
    block_size: int = 128,
    damp: float = 0.01,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Prune the decoder layers' Linear weights in place; return their keep-masks (``True`` = kept).

    The masks are keyed by parameter name (``model.layers.0.self_attn.q_proj.weight``).

    Args:
        model: a Llama-family ``*ForCausalLM`` (Llama, SmolLM2, Mistral, Qwen2/3).
        calibration: token sequences, as `calibration_batches` reads them (a data module, batches of
            ``input_ids`` / ``attention_mask``, or a LongTensor of ids); unused by ``"magnitude"``.
        method: ``"wanda"``, ``"sparsegpt"`` or ``"magnitude"``.
        sparsity: fraction of every weight matrix to prune, in [0, 1); ``None`` means 0.5, or ``1 − N/M``
            with a pattern.
        pattern: ``None`` / ``"unstructured"``, or ``"N:M"`` (``"2:4"``) to keep N of every M consecutive
            inputs of each row.
        num_sequences: calibration rows to use at most.
        batch_size: rows per forward pass.
        block_size: SparseGPT's column block.
        damp: SparseGPT's dampening, a fraction of the mean Hessian diagonal.
        progress: show a progress bar over the layers.
    """
    settings = oneshot_settings(method, sparsity, pattern, block_size, damp)
    decoder = decoder_of(model)
    layers = _decoder_linears(model, decoder.layers)
    _check_groups(layers, settings.nm, pattern)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        inputs = None
        if method != "magnitude":
            inputs = first_layer_inputs(model, calibration_batches(calibration, num_sequences, batch_size))
        masks = {}
        pairs = zip(decoder.layers, layers, strict=True)
        for layer, linears in tqdm(pairs, desc="layers", total=len(layers), disable=not progress):
            stats = {} if inputs is None else _statistics(layer, linears, inputs, method)
            for name, linear in linears.items():
                masks[f"{name}.weight"] = _prune(linear, stats.get(name), settings)
            if inputs is not None:
                inputs = run_layer(layer, inputs)  # the next layer sees this one pruned
    finally:
        for module, training in modes.items():
            module.training = training
    return masks


@dataclass(frozen=True)
class _Settings:
    sparsity: float  # fraction of each matrix pruned
    nm: tuple[int, int] | None  # (n, m) of an N:M pattern, None for unstructured
    block_size: int
    damp: float


def oneshot_settings(
    method: str, sparsity: float | None, pattern: str | None, block_size: int, damp: float
) -> _Settings:
    """The settings to prune with; a ValueError (TypeError) naming any bad argument and its fix."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(
            f"pattern must be None, 'unstructured' or an 'N:M' string such as '2:4'; got {pattern!r}."
        )
    nm = parse_pattern(pattern or "unstructured")
    if sparsity is not None and not 0 <= sparsity < 1:
        raise ValueError(
            f"sparsity must be in [0, 1), the fraction of each weight matrix to prune; got {sparsity}."
        )
    if nm is not None:
        implied = 1 - nm[0] / nm[1]
        if sparsity is not None and not math.isclose(sparsity, implied):
            raise ValueError(
                f"sparsity={sparsity} contradicts pattern={pattern!r}, which prunes exactly "
                f"1 - {nm[0]}/{nm[1]} = {implied:g} of each matrix; leave sparsity unset (None) or set it to "
                f"{implied:g}."
            )
        sparsity = implied
    if block_size < 1:
        raise ValueError(
            f"block_size must be a positive number of columns (128 by default); got {block_size}."
        )
    if method == "sparsegpt" and nm is not None and block_size % nm[1]:
        raise ValueError(
            f"block_size must be a positive multiple of M={nm[1]} with pattern={pattern!r}, so that no N:M "
            f"group straddles two SparseGPT blocks; got {block_size}."
        )
    if damp < 0:
        raise ValueError(
            f"damp must be >= 0 (a fraction of the mean Hessian diagonal, 0.01 by default); got {damp}."
        )
    return _Settings(0.5 if sparsity is None else sparsity, nm, block_size, damp)


def _decoder_linears(model: nn.Module, layers: nn.ModuleList) -> list[dict[str, nn.Linear]]:
    """Per decoder layer, its Linear modules by full name (``model.layers.0.self_attn.q_proj``)."""
    names = {module: name for name, module in model.named_modules()}
    return [
        {name: m for name, m in layer.named_modules(prefix=names[layer]) if isinstance(m, nn.Linear)}
        for layer in layers
    ]


def _check_groups(
    layers: list[dict[str, nn.Linear]], nm: tuple[int, int] | None, pattern: str | None
) -> None:
    """Every Linear's input size must split into whole N:M groups; the error names the first that does not."""
    if nm is None:
        return
    for linears in layers:
        for name, linear in linears.items():
            if linear.in_features % nm[1]:
                raise ValueError(
                    f"pattern={pattern!r} groups every {nm[1]} consecutive inputs, but {name} has "
                    f"in_features={linear.in_features}, not a multiple of {nm[1]}; choose an M that divides "
                    "every decoder Linear's input size (2:4 suits every Llama-family model)."
                )


def _statistics(
    layer: nn.Module, linears: dict[str, nn.Linear], inputs: list[LayerInput], method: str
) -> dict[str, Statistics]:
    """Each Linear's input statistics over the real tokens of ``inputs``, taken as the dense layer runs."""
    kind = InputNorms if method == "wanda" else Hessian
    stats = {name: kind(linear.in_features, linear.weight.device) for name, linear in linears.items()}
    current: list[torch.Tensor] = []  # the attention mask of the batch being run

    def hook(name: str):
        return lambda module, args, output: stats[name].add(real_tokens(args[0], current[0]))

    handles = [linear.register_forward_hook(hook(name)) for name, linear in linears.items()]
    try:
        for item in inputs:
            current[:] = [item.attention_mask]
            run_layer(layer, [item])
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _prune(linear: nn.Linear, stats: Statistics | None, settings: _Settings) -> torch.Tensor:
    """Prune ``linear.weight`` in place as ``settings`` say; its keep-mask."""
    weight, sparsity, nm = linear.weight, settings.sparsity, settings.nm
    if isinstance(stats, Hessian):
        new, keep = sparsegpt_prune(weight, stats.value(), sparsity, nm, settings.block_size, settings.damp)
        weight.copy_(new)
        return keep
    if isinstance(stats, InputNorms):
        keep = wanda_mask(weight, stats.sum_of_squares, sparsity, nm)
    elif nm is not None:
        keep = nm_mask(weight, *nm)
    else:
        keep = magnitude_masks({"weight": weight}, sparsity, scope="layer")["weight"]
    weight.masked_fill_(~keep, 0)
    return keep

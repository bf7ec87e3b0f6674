"""Remove decoder blocks, FFN channels, attention heads and hidden channels from a Llama-family model.

Each function keeps the listed units, slices every tensor that holds them and updates the config, so the
result is a stock model: ``save_pretrained`` then ``AutoModelForCausalLM.from_pretrained`` rebuilds the same
shapes. Widths are uniform over layers (a stock config has one ``intermediate_size`` and one head count),
and ``head_dim`` is written explicitly because ``hidden_size / num_attention_heads`` stops describing it.

torch-pruning is not used here: its dependency graph would find the same couplings, but it neither keeps
GQA groups together nor updates the config, and each slice below is one line of indexing.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2))
    >>> decoder = decoder_of(model)
    >>> keep_layers(decoder, [0, 2])
    >>> keep_ffn_channels(decoder, [torch.arange(8)] * 2)
    >>> keep_heads(decoder, [torch.tensor([2, 3])] * 2)  # query heads 2, 3: the second kv group
    >>> c = model.config
    >>> c.num_hidden_layers, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    (2, 8, 2, 1, 4)
"""

from __future__ import annotations

import torch
from torch import nn

from compress.sparsity.llm.decoder import Decoder, decoder_of

__all__ = ["decoder_of", "keep_ffn_channels", "keep_heads", "keep_hidden", "keep_layers"]


def keep_layers(decoder: Decoder, layers: list[int]) -> None:
    """Keep only the decoder layers at these indices (in order); the others are removed."""
    kept = [decoder.layers[i] for i in layers]
    decoder.backbone.layers = decoder.layers = nn.ModuleList(kept)
    for index, layer in enumerate(kept):
        layer.self_attn.layer_idx = index
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = index
    config = decoder.config
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in layers]
    config.num_hidden_layers = len(kept)


def keep_ffn_channels(decoder: Decoder, channels: list[torch.Tensor]) -> None:
    """Per layer, keep these FFN channels (the same count in every layer)."""
    _check_uniform(channels, "FFN channels")
    for layer, keep in zip(decoder.layers, channels, strict=True):
        mlp = layer.mlp
        _slice(mlp.gate_proj, rows=keep)
        _slice(mlp.up_proj, rows=keep)
        _slice(mlp.down_proj, cols=keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(keep)
    decoder.config.intermediate_size = len(channels[0])


def keep_heads(decoder: Decoder, heads: list[torch.Tensor]) -> None:
    """Per layer, keep these query heads (sorted); a key/value head stays while any of its queries does.

    Every kept key/value group must keep the same number of query heads, and every layer the same counts.
    """
    _check_uniform(heads, "query heads")
    per_group = decoder.heads // decoder.kv_heads
    head_dim = decoder.head_dim
    groups = [torch.unique(keep // per_group) for keep in heads]
    _check_uniform(groups, "key/value groups")
    kept_per_group = len(heads[0]) // len(groups[0])
    for keep, group in zip(heads, groups, strict=True):
        counts = torch.bincount(keep // per_group, minlength=decoder.kv_heads)[group]
        if not bool((counts == kept_per_group).all()):
            raise ValueError(
                f"Every kept key/value group must keep the same number of query heads; got {counts.tolist()}."
            )
    for layer, keep, group in zip(decoder.layers, heads, groups, strict=True):
        attn = layer.self_attn
        q_rows, kv_rows = _head_rows(keep, head_dim), _head_rows(group, head_dim)
        _slice(attn.q_proj, rows=q_rows)
        _slice(attn.k_proj, rows=kv_rows)
        _slice(attn.v_proj, rows=kv_rows)
        _slice(attn.o_proj, cols=q_rows)
        attn.num_key_value_groups = kept_per_group
    config = decoder.config
    config.head_dim = head_dim
    config.num_attention_heads = len(heads[0])
    config.num_key_value_heads = len(groups[0])


def keep_hidden(decoder: Decoder, channels: torch.Tensor) -> None:
    """Keep these hidden (residual stream) channels in the embeddings, every norm, projection and the head."""
    model, embed = decoder.model, decoder.backbone.embed_tokens
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embed.weight
    embed.weight = nn.Parameter(embed.weight.data[:, channels].clone())
    embed.embedding_dim = len(channels)
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _slice(linear, cols=channels)
        for linear in (attn.o_proj, mlp.down_proj):
            _slice(linear, rows=channels)
    for norm in decoder.norms():
        norm.weight = nn.Parameter(norm.weight.data[channels].clone())
    head = model.get_output_embeddings()
    if tied:
        head.weight = embed.weight
    elif head is not None:
        _slice(head, cols=channels)
    decoder.config.head_dim = decoder.head_dim  # fixed before hidden_size changes
    decoder.config.hidden_size = len(channels)


def _slice(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    weight = linear.weight.data
    if rows is not None:
        weight = weight[rows]
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.data[rows].clone())
    if cols is not None:
        weight = weight[:, cols]
    linear.weight = nn.Parameter(weight.clone())
    linear.out_features, linear.in_features = linear.weight.shape


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _check_uniform(per_layer: list[torch.Tensor], what: str) -> None:
    sizes = {len(keep) for keep in per_layer}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"Every layer must keep the same, non-zero number of {what}; got {sorted(sizes)}.")

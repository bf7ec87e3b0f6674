"""Whether a pruned model still saves as a stock Hugging Face folder.

transformers 5 has no ``pruned_heads`` (head size = hidden_size / num_attention_heads), so only a model with
all its heads and equal FFN widths round-trips through ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

from torch import nn

from compress.sparsity.structured.blocks import find_prunable_model, prunable_blocks


def check_stock_loadable(model: nn.Module) -> None:
    """Raises unless ``save_pretrained`` → ``from_pretrained`` (plain transformers) rebuilds these shapes."""
    model = find_prunable_model(model)
    config, blocks = model.config, prunable_blocks(model)
    pruned = [i for i, b in enumerate(blocks) if b.qkv[0].out_features != config.hidden_size]
    if pruned:
        raise ValueError(
            f"attention heads were removed in layers {pruned}: transformers 5 has no `pruned_heads` and "
            "derives the head size as hidden_size / num_attention_heads, so no stock config describes this "
            "model and from_pretrained would fail with size mismatches. Export it with torch.onnx.export or "
            "torch.export instead, or save its state_dict with the pruning history and rebuild the shapes "
            "with replay_history before loading; pruning FFN channels only keeps a model stock-loadable."
        )
    sizes = [b.intermediate.out_features for b in blocks]
    if any(size != config.intermediate_size for size in sizes):
        raise ValueError(
            f"the FFN widths differ per layer ({sizes}) but a stock config has one intermediate_size; "
            "prune with uniform_per_layer=True for a Hugging Face folder, or export with ONNX / torch.export"
        )

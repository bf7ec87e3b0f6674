"""How much each decoder block, FFN channel, attention head and hidden channel matters, from calibration data.

One forward pass per calibration batch, with hooks (Minitron, Muralidharan et al. 2024; ShortGPT, Men et
al. 2024):

- **blocks**: Block Influence ``1 − cos(x_in, x_out)`` of each decoder layer, averaged over real tokens
  (a block that barely turns the residual stream matters little); optionally ``skip_kl``: the KL from
  the full model's next-token distribution to the one with that block skipped (one extra forward per
  block and batch);
- **ffn**: per layer and channel, the mean |activation| entering ``down_proj``;
- **heads**: per layer and query head, the mean L2 norm of the head's output entering ``o_proj``;
- **hidden**: per hidden channel, the mean |output| of every RMSNorm, summed over the norms.

Channel statistics are means over a batch's real tokens, aggregated over batches as the root of the
summed squares (Minitron's batch aggregation). Padding never counts.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2))
    >>> scores = llm_importance(model, torch.randint(0, 64, (4, 12)))
    >>> scores.blocks.shape, scores.ffn[0].shape, scores.heads[0].shape, scores.hidden.shape
    (torch.Size([3]), torch.Size([32]), torch.Size([4]), torch.Size([16]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compress.sparsity.llm.calibration import Batch, Calibration, calibration_batches
from compress.sparsity.llm.decoder import Decoder, decoder_of

BlockMeasure = Literal["influence", "skip_kl"]


@dataclass
class Importance:
    """Scores from `llm_importance`; higher means more important. Lists are indexed by decoder layer."""

    blocks: torch.Tensor  # [layers]
    ffn: list[torch.Tensor]  # [intermediate_size] per layer
    heads: list[torch.Tensor]  # [num_attention_heads] per layer
    hidden: torch.Tensor  # [hidden_size]

    def groups(self, layer: int, kv_heads: int) -> torch.Tensor:
        """Per key/value group of ``layer``: the summed scores of its query heads."""
        return self.heads[layer].view(kv_heads, -1).sum(dim=1)


class _Stats:
    """Per-batch means over real tokens, kept as summed squares across batches."""

    def __init__(self) -> None:
        self.squares: dict[str, torch.Tensor] = {}
        self.mask = torch.ones(1, 1, dtype=torch.bool)

    def add(self, key: str, values: torch.Tensor) -> None:  # values [batch, tokens, channels]
        mean = values[self.mask].float().mean(dim=0)
        self.squares[key] = self.squares.get(key, 0) + mean.square()

    def root(self, key: str) -> torch.Tensor:
        return self.squares[key].sqrt().cpu()


@torch.no_grad()
def llm_importance(
    model: nn.Module,
    calibration: Calibration,
    blocks: BlockMeasure = "influence",
    num_sequences: int = 128,
    batch_size: int = 8,
    progress: bool = False,
) -> Importance:
    """Importance scores of a Llama-family causal LM's blocks and channels on calibration data.

    Args:
        model: a Llama-family ``*ForCausalLM`` (see `decoder_of`).
        calibration: a `LanguageModelingDataModule`, batches or a LongTensor of ids (`calibration_batches`).
        blocks: ``"influence"`` (1 − cos, one pass) or ``"skip_kl"`` (KL when the block is skipped).
        num_sequences: calibration rows used.
        batch_size: rows per forward pass when ``calibration`` is a tensor.
        progress: show a progress bar over the calibration batches.
    """
    if blocks not in ("influence", "skip_kl"):
        raise ValueError(f"blocks must be 'influence' or 'skip_kl', got {blocks!r}.")
    decoder = decoder_of(model)
    batches = calibration_batches(calibration, num_sequences, batch_size)
    was_training = model.training
    model.eval()
    try:
        shown = tqdm(batches, desc="importance", unit="batch", disable=not progress)
        scores = _channel_scores(decoder, shown)
        if blocks == "skip_kl":
            scores.blocks = _skip_kl(
                decoder, tqdm(batches, desc="skip-KL", unit="batch", disable=not progress)
            )
    finally:
        model.train(was_training)
    return scores


def _channel_scores(decoder: Decoder, batches: Iterable[Batch]) -> Importance:
    stats = _Stats()
    influence = torch.zeros(len(decoder.layers), dtype=torch.float64)
    tokens = 0
    with _hooks(decoder, stats, influence):
        for batch in batches:
            stats.mask = batch["attention_mask"].bool().to(_device(decoder))
            _forward(decoder, batch, logits=False)
            tokens += int(stats.mask.sum())
    n = len(decoder.layers)
    return Importance(
        blocks=(influence / tokens).float(),
        ffn=[stats.root(f"ffn{i}") for i in range(n)],
        heads=[stats.root(f"heads{i}") for i in range(n)],
        hidden=stats.root("hidden"),
    )


@contextlib.contextmanager
def _hooks(decoder: Decoder, stats: _Stats, influence: torch.Tensor) -> Iterator[None]:
    handles = []
    head_dim = decoder.head_dim
    for i, layer in enumerate(decoder.layers):

        def block(module, args, kwargs, output, i=i) -> None:
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(x_in[stats.mask].float(), x_out[stats.mask].float(), dim=-1)
            influence[i] += float((1 - cos).sum())

        def ffn(module, args, i=i) -> None:
            stats.add(f"ffn{i}", args[0].abs())

        def heads(module, args, i=i) -> None:
            x = args[0]
            stats.add(f"heads{i}", x.view(*x.shape[:-1], -1, head_dim).norm(dim=-1))

        handles.append(layer.register_forward_hook(block, with_kwargs=True))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(ffn))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(heads))
    norm_sum: list[torch.Tensor] = []
    for norm in decoder.norms():
        handles.append(norm.register_forward_hook(lambda m, a, out: norm_sum.append(out.abs())))
    handles.append(decoder.backbone.register_forward_hook(lambda m, a, out: _flush(stats, norm_sum)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _flush(stats: _Stats, norm_sum: list[torch.Tensor]) -> None:
    stats.add("hidden", torch.stack(norm_sum).sum(dim=0))
    norm_sum.clear()


def _skip_kl(decoder: Decoder, batches: Iterable[Batch]) -> torch.Tensor:
    kl = torch.zeros(len(decoder.layers), dtype=torch.float64)
    tokens = 0
    for batch in batches:
        mask = batch["attention_mask"].bool().to(_device(decoder))
        full = _forward(decoder, batch).logits[mask].float().log_softmax(-1)
        for i, layer in enumerate(decoder.layers):
            handle = layer.register_forward_hook(_identity, with_kwargs=True)
            try:
                skipped = _forward(decoder, batch).logits[mask].float().log_softmax(-1)
            finally:
                handle.remove()
            kl[i] += float(F.kl_div(skipped, full, log_target=True, reduction="sum"))
        tokens += int(mask.sum())
    return (kl / tokens).float()


def _identity(module, args, kwargs, output):
    """A forward hook that makes a decoder layer return its input: the block is skipped."""
    x_in = args[0] if args else kwargs["hidden_states"]
    return (x_in, *output[1:]) if isinstance(output, tuple) else x_in


def _forward(decoder: Decoder, batch: Batch, logits: bool = True):
    """The model's output on ``batch``; without ``logits``, only the decoder runs (no output head)."""
    device = _device(decoder)
    model = decoder.model if logits else decoder.backbone
    return model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        use_cache=False,
    )


def _device(decoder: Decoder) -> torch.device:
    return decoder.backbone.embed_tokens.weight.device

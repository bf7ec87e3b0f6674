"""Structured pruning of BERT-style encoders: whole attention heads and FFN channels are removed.

torch-pruning's `DependencyGraph` finds what shrinks together (query/key/value outputs with the attention
output's input; the intermediate outputs with the FFN output's input), so the model gets smaller and faster.
The hidden size never changes, so embeddings, norms, pooler and classifier keep their shapes. Which layers
may be pruned follows `select_targets`: never a teacher, LoRA/adapter weights or the classification head.

Pruning is a *plan* (`plan_pruning`: which heads and channels go, ranked by torch-pruning's importance) and
its application (`replay_history`). A plan, or the history of several, is plain data (JSON- and
``weights_only``-safe); indices count within the layer as it was when the entry was applied::

    [{"layer": 1, "heads": [0, 3], "channels": [5, 17, ...]}, ...]

Replaying a history on a fresh, unpruned copy rebuilds the shapes, so the pruned ``state_dict`` loads.

LoRA (peft): adapters are merged into their base weights first (`merge_lora_into_base`), so importance sees
the weights the model computes with; then each restarts from zero (``lora_B`` zeroed, ``lora_A`` kept, the
layer unmerged): the function is unchanged and the adapters keep training. torch-pruning traces the live
LoRA branch and slices ``lora_A``/``lora_B`` with the base layer. Only vanilla LoRA on linear layers.

Saving: transformers 5 has no ``pruned_heads`` (head size = hidden_size / num_attention_heads), so only a
model with all its heads and equal FFN widths is a stock Hugging Face folder: see `check_stock_loadable`.

Example:
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=4, intermediate_size=64))
    >>> history = prune_structured(model, head_ratio=0.5, ffn_ratio=0.25)
    >>> structure_of(model)
    Structure(heads=[2, 2], channels=[48, 48])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch_pruning as tp
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from transformers import PreTrainedModel

from compress.sparsity.merge import lora_layers, merge_lora_into_base
from compress.sparsity.targets import select_targets

ImportanceName = Literal["magnitude", "taylor"]
IMPORTANCE = {
    "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
}
HISTORY_ATTRIBUTE = "structured_pruning_history"  # on the Hugging Face model object (not in its config)
EPS = 1e-6  # ratio * count is floored; this absorbs float error such as 0.57 * 100 = 56.99999999999999


@dataclass(frozen=True)
class Block:
    """One encoder layer's prunable parts; the linears are the base layers under any LoRA wrapper."""

    attention: nn.Module  # BertSelfAttention-like: holds num_attention_heads, attention_head_size
    qkv: tuple[nn.Linear, nn.Linear, nn.Linear]
    intermediate: nn.Linear


@dataclass(frozen=True)
class Structure:
    """Attention heads and FFN channels per encoder layer."""

    heads: list[int]
    channels: list[int]


def find_prunable_model(module: nn.Module, attribute: str | None = None) -> nn.Module:
    """The Hugging Face model to prune: ``module`` itself, ``module.<attribute>``, or the single outermost
    `PreTrainedModel` inside ``module`` that holds prunable weights (so never a teacher)."""
    if attribute is not None:
        try:
            module = module.get_submodule(attribute)
        except AttributeError as error:
            raise ValueError(f"module: {type(module).__name__} has no submodule {attribute!r}") from error
    if isinstance(module, PreTrainedModel):
        return module
    targets = select_targets(module)
    found: dict[str, nn.Module] = {}
    for name, child in module.named_modules():
        outermost = not any(name.startswith(f"{outer}.") for outer in found)
        if (
            isinstance(child, PreTrainedModel)
            and outermost
            and any(t.startswith(f"{name}.") for t in targets)
        ):
            found[name] = child
    if len(found) != 1:
        raise ValueError(
            f"module: expected one Hugging Face model (not a teacher) in {type(module).__name__}, found "
            f"{sorted(found) or 'none'}; pass module='<attribute holding the model to prune>'"
        )
    return next(iter(found.values()))


def encoder_blocks(model: nn.Module) -> list[Block]:
    """The BERT-style layers (``attention.self.query/key/value``, ``intermediate.dense``) one may prune."""
    targets = select_targets(model)

    def base(name: str) -> nn.Linear | None:
        return targets.get(name, targets.get(f"{name}.base_layer"))

    blocks = []
    for name, module in model.named_modules():
        attention = getattr(getattr(module, "attention", None), "self", None)
        if not hasattr(attention, "num_attention_heads") or not hasattr(module, "intermediate"):
            continue
        qkv = tuple(base(f"{name}.attention.self.{p}") for p in ("query", "key", "value"))
        intermediate = base(f"{name}.intermediate.dense")
        if all(qkv) and intermediate is not None:
            blocks.append(Block(attention, qkv, intermediate))
    return blocks


def structure_of(model: nn.Module) -> Structure:
    """Heads and FFN channels of each prunable layer."""
    blocks = encoder_blocks(find_prunable_model(model))
    return Structure([_size(b, "heads") for b in blocks], [_size(b, "channels") for b in blocks])


def check_ratio(field: str, value: float) -> None:
    """A pruning ratio is a fraction in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{field}: {value!r} must be in [0, 1) (the fraction of them removed)")


def removal_counts(
    now: Structure, head_ratio: float, ffn_ratio: float, uniform_per_layer: bool, of: Structure | None = None
) -> tuple[list[int], list[int]]:
    """Heads and channels still to remove, per layer (uniform) or in total (one-element lists), so that
    ``ratio`` of the structure ``of`` (default ``now``) is gone; what is already gone counts."""
    of = of or now
    if len(of.heads) != len(now.heads):
        raise ValueError(f"of: {len(of.heads)} layers, but the model has {len(now.heads)}")

    def count(current: list[int], original: list[int], ratio: float) -> list[int]:
        if not uniform_per_layer:
            current, original = [sum(current)], [sum(original)]
        return [max(0, math.floor(ratio * o + EPS) - (o - c)) for c, o in zip(current, original, strict=True)]

    return count(now.heads, of.heads, head_ratio), count(now.channels, of.channels, ffn_ratio)


def prune_structured(
    model: nn.Module,
    head_ratio: float = 0.0,
    ffn_ratio: float = 0.0,
    importance: ImportanceName = "magnitude",
    batch: Mapping[str, Tensor] | None = None,
    uniform_per_layer: bool = True,
) -> list[dict]:
    """Removes ``head_ratio`` of the heads and ``ffn_ratio`` of the FFN channels (rounded down), in place.

    Args:
        model: a Hugging Face BERT-style model, a peft model, or a module holding one (e.g. a LightningModule
            with a teacher: the teacher is never touched).
        head_ratio: fraction of the attention heads removed (per layer, or over all layers if not uniform).
        ffn_ratio: fraction of the intermediate (FFN) channels removed.
        importance: ``magnitude`` (weight L2 norm) or ``taylor`` (|weight x gradient| of the loss on
            ``batch``), torch-pruning's GroupMagnitudeImportance / GroupTaylorImportance.
        batch: model inputs with ``labels``; needed for ``taylor``.
        uniform_per_layer: every layer loses the same number; otherwise units are ranked across layers.

    Returns:
        The history of this pruning (see the module docstring).
    """
    model = find_prunable_model(model)
    history = plan_pruning(model, head_ratio, ffn_ratio, importance, batch, uniform_per_layer)
    if not history:
        structure = structure_of(model)
        raise ValueError(
            f"head_ratio={head_ratio} and ffn_ratio={ffn_ratio} remove nothing from layers with heads "
            f"{structure.heads} and channels {structure.channels}; raise a ratio"
        )
    replay_history(model, history)
    return history


def plan_pruning(
    model: nn.Module,
    head_ratio: float,
    ffn_ratio: float,
    importance: ImportanceName = "magnitude",
    batch: Mapping[str, Tensor] | None = None,
    uniform_per_layer: bool = True,
    of: Structure | None = None,
) -> list[dict]:
    """Chooses what `prune_structured` removes, without removing it (LoRA layers get merged, though).

    Ratios are fractions of ``of`` (default: the model as it is), so an iterative schedule passes the
    original structure and growing ratios. torch-pruning's pruner chooses (design.md's recipe: per-layer
    ``pruning_ratio_dict``, ``prune_num_heads=True``, ``prune_head_dims=False``); its ratios are set to the
    middle of the interval that yields the exact count, because it rounds with ``ceil``/``int``.
    """
    check_ratio("head_ratio", head_ratio)
    check_ratio("ffn_ratio", ffn_ratio)
    if importance not in IMPORTANCE:
        raise ValueError(f"importance: {importance!r} must be one of {sorted(IMPORTANCE)}")
    model = find_prunable_model(model)
    blocks = _blocks(model)
    heads, channels = removal_counts(structure_of(model), head_ratio, ffn_ratio, uniform_per_layer, of)
    if not any(heads) and not any(channels):
        return []
    _check_adapters(model)
    if lora_layers(model):
        merge_lora_into_base(model)  # importance must see the adapters' updates; merged LoRA is not traced
    scorer = IMPORTANCE[importance]()
    with _traceable(model):
        if importance == "taylor":
            _loss_gradients(model, batch)
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs(model),
            importance=scorer,
            pruning_ratio=0.0,  # everything outside the ratio dicts (the hidden size) stays
            num_heads={linear: b.attention.num_attention_heads for b in blocks for linear in b.qkv},
            prune_num_heads=True,
            prune_head_dims=False,
            ignored_layers=[m for m in model.modules() if isinstance(m, nn.Linear) and not _in(m, blocks)],
            output_transform=lambda output: output[0],
            in_channel_groups={},  # its defaults are shared dicts it writes to (they keep every model alive)
            out_channel_groups={},
            **_pruner_ratios(blocks, heads, channels, uniform_per_layer),
        )
        history = _chosen(pruner, blocks)
        if importance == "taylor":
            model.zero_grad(set_to_none=True)  # the importance pass's gradients must not reach an optimizer
    _check_counts(history, heads, channels, uniform_per_layer)
    return history


def replay_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Removes the heads and channels listed in ``history``, in order; returns ``model``.

    The entries are appended to the model's `applied_history`.
    """
    root, model = model, find_prunable_model(model)
    if not history:
        return root
    applied = applied_history(model) + [dict(entry) for entry in history]
    _check_adapters(model)
    adapters = lora_layers(model)
    if any(not layer.merged for layer in adapters.values()):
        merge_lora_into_base(model)
    _restart_lora(adapters.values())
    blocks = _blocks(model)
    with _traceable(model):
        graph, seen = None, set()
        for entry in history:
            layer = _checked_layer(entry, blocks)
            if graph is None or layer in seen:  # a layer pruned again: trace its new shapes
                graph, seen = _graph(model), set()
            seen.add(layer)
            _remove(graph, blocks[layer], entry)
    for adapter in adapters.values():
        base = adapter.get_base_layer()
        adapter.in_features, adapter.out_features = base.in_features, base.out_features
    _update_config(model, blocks)
    setattr(model, HISTORY_ATTRIBUTE, applied)
    return root


def applied_history(model: nn.Module) -> list[dict]:
    """Every removal `replay_history` made on this model object so far, in order."""
    return list(getattr(find_prunable_model(model), HISTORY_ATTRIBUTE, []))


def restore_history(model: nn.Module, history: list[dict]) -> nn.Module:
    """Brings ``model`` to a complete saved ``history``: replays what its `applied_history` lacks.

    A freshly built model gets all of it; a model already pruned along it (e.g. the one that was trained)
    is left as it is. Raises if the model was pruned differently (removed structure cannot come back).
    """
    done = applied_history(model)
    if [dict(entry) for entry in history[: len(done)]] != done:
        raise ValueError(
            f"history: this model has {len(done)} removals that the saved history ({len(history)} entries) "
            "does not start with; load the saved weights into a freshly built, unpruned model"
        )
    return replay_history(model, history[len(done) :])


def original_structure(model: nn.Module) -> Structure:
    """The structure before the `applied_history`: what the ratios of an iterative schedule refer to."""
    now = structure_of(model)
    heads, channels = list(now.heads), list(now.channels)
    for entry in applied_history(model):
        heads[entry["layer"]] += len(entry["heads"])
        channels[entry["layer"]] += len(entry["channels"])
    return Structure(heads, channels)


def check_stock_loadable(model: nn.Module) -> None:
    """Raises unless ``save_pretrained`` → ``from_pretrained`` (plain transformers) rebuilds these shapes."""
    model = find_prunable_model(model)
    config, blocks = model.config, _blocks(model)
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


def example_inputs(model: nn.Module) -> dict[str, Tensor]:
    """A small batch of token ids for tracing (the graph does not depend on the values)."""
    device = next(model.parameters()).device
    ids = torch.ones(2, 8, dtype=torch.long, device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _blocks(model: nn.Module) -> list[Block]:
    blocks = encoder_blocks(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no prunable BERT-style layers (attention.self.query/key/value and "
            "intermediate.dense outside the teacher, adapters and head)"
        )
    return blocks


def _in(linear: nn.Module, blocks: list[Block]) -> bool:
    return any(linear is b.intermediate or any(linear is q for q in b.qkv) for b in blocks)


def _pruner_ratios(blocks: list[Block], heads: list[int], channels: list[int], uniform: bool) -> dict:
    """Pruner settings removing exactly ``heads``/``channels`` (per layer, or totals if not uniform)."""

    def ratio(count: int, size: int) -> float:
        return (count - 0.5) / size  # ceil(r * size) == int-based rounding == count: no float edge cases

    if uniform:
        ratios, head_ratios = {}, {}
        for b, n_heads, n_channels in zip(blocks, heads, channels, strict=True):
            if n_heads:  # the attention scope needs a ratio > 0, or its heads are silently kept
                ratios[b.attention] = head_ratios[b.attention] = ratio(n_heads, _size(b, "heads"))
            if n_channels:
                ratios[b.intermediate] = ratio(n_channels, _size(b, "channels"))
        return {"pruning_ratio_dict": ratios, "head_pruning_ratio_dict": head_ratios}
    head_ratio = ratio(heads[0], sum(_size(b, "heads") for b in blocks)) if heads[0] else 0.0
    ratios = {tuple(b.attention for b in blocks): head_ratio} if heads[0] else {}
    if channels[0]:
        ffn = tuple(b.intermediate for b in blocks)
        ratios[ffn] = ratio(channels[0], sum(_size(b, "channels") for b in blocks))
    return {"pruning_ratio_dict": ratios, "head_pruning_ratio": head_ratio, "global_pruning": True}


def _chosen(pruner: tp.pruner.BasePruner, blocks: list[Block]) -> list[dict]:
    """The heads and channels the pruner's groups would remove (interactive mode; nothing is pruned)."""
    entries = [{"layer": i, "heads": [], "channels": []} for i in range(len(blocks))]
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if not pruner.DG.is_out_channel_pruning_fn(dep.handler):
                continue
            for entry, b in zip(entries, blocks, strict=True):
                if dep.target.module is b.qkv[0]:
                    entry["heads"] = sorted({int(i) // b.attention.attention_head_size for i in idxs})
                elif dep.target.module is b.intermediate:
                    entry["channels"] = sorted(int(i) for i in idxs)
    return [e for e in entries if e["heads"] or e["channels"]]


def _check_counts(history: list[dict], heads: list[int], channels: list[int], uniform: bool) -> None:
    chosen = [(len(e["heads"]), len(e["channels"])) for e in history]
    if uniform and chosen != [(h, c) for h, c in zip(heads, channels, strict=True) if h or c]:
        raise RuntimeError(
            f"torch-pruning chose {chosen} (heads, channels) per layer instead of {heads}, {channels}"
        )


def _graph(model: nn.Module) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(
        model, example_inputs=example_inputs(model), output_transform=lambda output: output[0]
    )


def _remove(graph: tp.DependencyGraph, block: Block, entry: dict) -> None:
    attention, size = block.attention, block.attention.attention_head_size
    if entry["heads"]:
        channels = [h * size + j for h in entry["heads"] for j in range(size)]
        graph.get_pruning_group(block.qkv[0], tp.prune_linear_out_channels, channels).prune()
        # BERT's forward reshapes with -1 heads, but these attributes describe the module to everyone else
        attention.num_attention_heads -= len(entry["heads"])
        attention.all_head_size = attention.num_attention_heads * size
    if entry["channels"]:
        graph.get_pruning_group(block.intermediate, tp.prune_linear_out_channels, entry["channels"]).prune()


def _checked_layer(entry: dict, blocks: list[Block]) -> int:
    layer = entry.get("layer")
    fits = isinstance(layer, int) and 0 <= layer < len(blocks)
    for key in ("heads", "channels") if fits else ():
        units, size = entry.get(key, []), _size(blocks[layer], key)
        fits = fits and len(set(units)) == len(units) < size and all(0 <= u < size for u in units)
    if not fits:
        raise ValueError(f"history: {entry} does not fit this model's {len(blocks)} layers and their sizes")
    return layer


def _size(block: Block, key: str) -> int:
    return block.attention.num_attention_heads if key == "heads" else block.intermediate.out_features


def _update_config(model: nn.Module, blocks: list[Block]) -> None:
    """Config fields follow the modules when all layers agree (a stock config has one value for all)."""
    heads = {b.attention.num_attention_heads for b in blocks}
    channels = {b.intermediate.out_features for b in blocks}
    if len(heads) == 1:
        model.config.num_attention_heads = heads.pop()
    if len(channels) == 1:
        model.config.intermediate_size = channels.pop()


def _check_adapters(model: nn.Module) -> None:
    for name, layer in model.named_modules():
        vanilla = isinstance(layer, LoraLinear) and not layer.lora_variant  # lora_variant: DoRA and friends
        if isinstance(layer, BaseTunerLayer) and not vanilla:
            raise ValueError(
                f"{name}: {type(layer).__module__}.{type(layer).__name__} adapters cannot be pruned "
                "structurally (vanilla LoRA on linear layers only); merge and unload them first"
            )


def _restart_lora(layers) -> None:
    """Merged adapters restart from zero (B = 0) and count as unmerged: same function, adapters live again."""
    with torch.no_grad():
        for layer in layers:
            for lora_b in layer.lora_B.values():
                lora_b.weight.zero_()
                if lora_b.bias is not None:
                    lora_b.bias.zero_()
            layer.merged_adapters.clear()


def _loss_gradients(model: nn.Module, batch: Mapping[str, Tensor] | None) -> None:
    """Gradients of the model's own loss on ``batch``, for Taylor importance (eval mode: no dropout)."""
    accepted = inspect.signature(model.forward).parameters
    inputs = {k: v for k, v in (batch or {}).items() if k in accepted}
    if "labels" not in inputs or "input_ids" not in inputs:
        raise ValueError(
            "batch: importance='taylor' needs a batch of model inputs with `input_ids` and `labels`"
        )
    model.eval()
    model.zero_grad(set_to_none=True)
    model(**inputs).loss.backward()


@contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """torch-pruning traces autograd: every parameter must require grad (a frozen base under LoRA does not),
    and its tracing leaves the model in eval mode. Flags are restored by name, since pruning swaps Parameters.
    """
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    training = {module: module.training for module in model.modules()}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, True))
        for module, mode in training.items():
            module.training = mode

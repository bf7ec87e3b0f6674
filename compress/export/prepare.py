"""Turn a trained model into the plain model an export writes, and check exports against it.

`export_ready` works on a deep copy (the caller's model is left as it was) and

1. makes `torch.nn.utils.prune` masks permanent, so no ``weight_orig``/``weight_mask`` keys reach a file
   and a masked LoRA base is really zero before the merge reads it;
2. merges LoRA (and DoRA) adapters with `merge_lora_keep_sparsity`, ``W' = M ⊙ (W + scale·B·A)``, so a
   pruned base stays exactly as sparse; IA3 through peft's merge (a per-channel rescaling keeps zeros);
3. refuses adapters that no stock architecture can hold (prompt/prefix tuning, bottleneck adapters)
   unless the caller (the ONNX route) can carry them.

Example:
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
    >>> lora = get_peft_model(model, LoraConfig(target_modules=["query"], task_type="SEQ_CLS"))
    >>> plain, merged = export_ready(lora)
    >>> type(plain).__name__, merged
    ('BertForSequenceClassification', True)
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, PeftType
from torch import nn
from torch.nn.utils import prune
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from compress.peft.bottleneck import bottleneck_adapters
from compress.sparsity.merge import merge_lora_keep_sparsity

Batch = dict[str, torch.Tensor]
# Sentences of different lengths, so a verification batch has padding and a real attention mask.
CHECK_TEXTS = (
    "a short one",
    "a somewhat longer example sentence, to check padding and the attention mask of the export",
    "the film was wonderful",
)


@dataclass
class ExportResult:
    """What an export wrote and how it was checked.

    Args:
        path: the folder written.
        max_abs_diff: largest logit difference between the reloaded export and the in-memory export-ready
            model on a check batch; `None` when verification was off.
        merge_max_abs_diff: largest logit difference caused by merging adapters (the sparsity-preserving
            merge drops LoRA updates on pruned weights); `None` when there was nothing to merge.
        extras: further measurements (e.g. int8 sizes and logit differences).
    """

    path: Path
    max_abs_diff: float | None = None
    merge_max_abs_diff: float | None = None
    extras: dict[str, float] = field(default_factory=dict)


def make_pruning_permanent(model: nn.Module) -> int:
    """Removes `torch.nn.utils.prune` re-parametrisations in place (``weight = weight_orig * mask``).

    Returns how many pruned tensors were made permanent.
    """
    count = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                count += 1
    return count


def export_ready(
    model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None, allow_bottleneck: bool = False
) -> tuple[nn.Module, bool]:
    """A merged, eval-mode deep copy of ``model`` and whether adapters were merged into it.

    Args:
        model: a transformers model, possibly a peft model and possibly pruned.
        masks: pruning masks by base-weight name (``...base_layer.weight``) for the LoRA merge; by default
            the base weight's zero pattern is the mask.
        allow_bottleneck: keep bottleneck adapters (they are ordinary modules to ONNX); otherwise refuse.

    Raises:
        ValueError: adapters that cannot be merged into a stock architecture.
    """
    ready = copy.deepcopy(model).eval()
    make_pruning_permanent(ready)
    if bottleneck_adapters(ready) and not allow_bottleneck:
        raise ValueError(
            "model has bottleneck adapters, which are non-linear and cannot be merged into a stock "
            "transformers architecture; write the base and adapters with "
            "compress.export.export_adapters(model, path), or use export_onnx(model, tokenizer, path)"
        )
    if not isinstance(ready, PeftModel):
        return ready, False
    return _merge_peft(ready, dict(masks) if masks is not None else None), True


def _merge_peft(model: PeftModel, masks: dict[str, torch.Tensor] | None) -> nn.Module:
    config = model.peft_config[model.active_adapter]
    if config.is_prompt_learning:
        raise ValueError(
            f"adapter {model.active_adapter!r} is {config.peft_type.value} (virtual tokens), which no "
            "stock architecture can hold; write it as a peft folder with export_adapters(model, path)"
        )
    if config.peft_type == PeftType.LORA:
        return merge_lora_keep_sparsity(model, masks)
    if config.peft_type == PeftType.IA3:
        return model.merge_and_unload()  # IA3 rescales weights: zeros stay zero
    raise ValueError(
        f"adapter {model.active_adapter!r}: merging {config.peft_type.value} adapters is not supported "
        "(LoRA, DoRA and IA3 are); write it as a peft folder with export_adapters(model, path)"
    )


CAUSAL_LM_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` (or the base of a peft model) is a class of transformers' causal-LM auto mapping."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return type(base).__name__ in CAUSAL_LM_CLASSES


def accepted_inputs(model: nn.Module) -> tuple[str, ...]:
    """Which of the usual tokenizer outputs the (base) model's ``forward`` takes, in a fixed order."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    parameters = inspect.signature(base.forward).parameters
    return tuple(name for name in ("input_ids", "attention_mask", "token_type_ids") if name in parameters)


def check_batch(
    tokenizer=None,
    texts: Sequence[str] = CHECK_TEXTS,
    length: int = 24,
    vocab_size: int | None = None,
    names: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids"),
    batch_size: int | None = None,
) -> Batch:
    """A small batch to compare exports on: tokenized ``texts`` padded to ``length``, or random ids.

    Without a tokenizer, ``batch_size`` (default: one per text) rows of ids are drawn from ``vocab_size``
    (fixed seed) and the first row is half padding.
    """
    if tokenizer is not None:
        if tokenizer.pad_token is None:  # many causal LMs' tokenizers: pad with id 0, masked out
            return _padded(tokenizer, texts, length, names)
        encoded = tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        return {name: encoded[name] for name in names if name in encoded}
    if vocab_size is None:
        raise ValueError("check_batch: pass a tokenizer or the vocab_size to draw token ids from")
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size or len(texts), length)
    batch = {
        "input_ids": torch.randint(0, vocab_size, shape, generator=generator),
        "attention_mask": torch.ones(shape, dtype=torch.long),
        "token_type_ids": torch.zeros(shape, dtype=torch.long),
    }
    batch["attention_mask"][0, length // 2 :] = 0
    return {name: batch[name] for name in names}


def _padded(tokenizer, texts: Sequence[str], length: int, names: Sequence[str]) -> Batch:
    rows = [tokenizer(text, truncation=True, max_length=length)["input_ids"] for text in texts]
    batch = {
        "input_ids": torch.zeros(len(rows), length, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), length, dtype=torch.long),
    }
    for i, row in enumerate(rows):
        batch["input_ids"][i, : len(row)] = torch.tensor(row)
        batch["attention_mask"][i, : len(row)] = 1
    return {name: batch[name] for name in names if name in batch}


@torch.inference_mode()
def logits_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's logits (float32, on the CPU) on ``batch``, computed in eval mode.

    The batch is moved to the model's device; the model's train/eval mode is restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return model(**{name: t.to(device) for name, t in batch.items()}).logits.float().cpu()
    finally:
        model.train(was_training)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, with a clear error when shapes differ."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    if a.shape != b.shape:
        raise ValueError(f"export check: logits shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).abs().max())

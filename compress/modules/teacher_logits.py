"""Where a `DistillationModule` run reads the teacher's training logits: the frozen teachers, or the
`TeacherCache` store built (once) for the run and checked against the teacher once per epoch.

Example:
    >>> from compress.distill import TeacherCache
    >>> from compress.modules.teacher_logits import TrainingTeacherLogits
    >>> source = TrainingTeacherLogits(TeacherCache(top_k=5))  # opened by DistillationModule.on_fit_start
    >>> source.settings.top_k, source.cached
    (5, False)
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from compress.data import EXAMPLE_ID
from compress.distill.teacher_cache import (
    CachedLogits,
    TeacherCache,
    bytes_per_row,
    cache_key,
    fingerprint_model,
    write_cache,
)

NEEDED = ("cache_dataloader", "train_fingerprint")


class TrainingTeacherLogits:
    """The teacher logits of training batches: ``module.teacher_logits(batch)``, or the run's cache.

    Args:
        settings: the cache settings, or None to run the teachers at every step.
    """

    def __init__(self, settings: TeacherCache | None) -> None:
        self.settings = settings
        self._cache: CachedLogits | None = None
        self._verify_next = False

    @property
    def cached(self) -> bool:
        """Whether training batches read the cache (after `open`)."""
        return self._cache is not None

    def open(self, module: L.LightningModule, trainer: L.Trainer) -> None:
        """At fit start: build or reuse the cache of this teacher and data (nothing without settings)."""
        if self.settings is not None:
            self._cache = open_teacher_cache(self.settings, module, trainer)

    def start_epoch(self) -> None:
        """Arms the check of the epoch's first cached batch against the teacher."""
        self._verify_next = self.cached and self.settings.verify

    def __call__(self, module: L.LightningModule, batch: dict[str, Tensor]) -> Tensor:
        """The teacher logits of the training ``batch`` of ``module``."""
        if self._cache is None:
            return module.teacher_logits(batch)
        length = batch["input_ids"].shape[1] if module.task == "causal_lm" else None
        cached = self._cache.lookup(batch[EXAMPLE_ID], length).to(module.device, non_blocking=True)
        if self._verify_next:  # once per epoch: the cache must still be what the teacher says
            self._verify_next = False
            with torch.autocast(module.device.type, enabled=False):
                mask = batch.get("attention_mask") if module.task == "causal_lm" else None
                check_cached_logits(cached, module.teacher_logits(batch), self.settings.top_k, mask)
        return cached


def open_teacher_cache(settings: TeacherCache, module: L.LightningModule, trainer: L.Trainer) -> CachedLogits:
    """The cache for this teacher and training data: reused when its fingerprint exists, else built.

    Refused before training when the inputs are not deterministic or rows cannot be identified. Under
    DDP rank 0 builds it while the others wait, then every rank memory-maps the same files.
    """
    datamodule = _check_source(trainer.datamodule, module)
    causal = module.task == "causal_lm"
    classes = module.vocab_size if causal else module.teacher.config.num_labels
    positions = datamodule.hparams.block_size if causal else None  # per-token rows of a causal LM
    key = cache_key(
        teachers=[fingerprint_model(t) for t in module.teachers],
        weights=module.teacher_weights,
        temperature=module.loss.temperature if len(module.teachers) > 1 else None,
        data=datamodule.train_fingerprint(),
        top_k=settings.top_k,
        classes=classes,
    )
    root = (
        Path(settings.directory) if settings.directory else Path(trainer.default_root_dir) / "teacher_cache"
    )
    folder = root / key
    if trainer.is_global_zero and not (folder / "meta.json").exists():
        start = time.perf_counter()
        loader = datamodule.cache_dataloader()
        rows = len(loader.dataset)
        with torch.random.fork_rng():  # building draws no number the training would have drawn
            write_cache(folder, _teacher_batches(module, loader), rows, classes, settings.top_k, positions)
        unit = "token" if causal else "row"
        module.print(
            f"teacher cache: {rows} rows in {time.perf_counter() - start:.1f} s, "
            f"{bytes_per_row(classes, settings.top_k):,} bytes per {unit} -> {folder}"
        )
    elif trainer.is_global_zero:
        module.print(f"teacher cache: reusing {folder}")
    trainer.strategy.barrier("teacher_cache")
    return CachedLogits(folder, settings.tail)


def check_cached_logits(cached: Tensor, fresh: Tensor, top_k: int | None, mask: Tensor | None = None) -> None:
    """Stop when the cache disagrees with the teacher on a training batch (inputs not deterministic).

    With ``mask`` (a causal LM's attention mask), only real tokens count: padding differs between batches.
    """
    if mask is not None:
        cached, fresh = cached[mask.bool()], fresh[mask.bool()]
    if top_k is not None:
        kept = cached.topk(min(top_k, cached.shape[-1]), dim=-1).indices
        cached, fresh = cached.gather(-1, kept), fresh.gather(-1, kept)
    fresh = fresh.to(cached.dtype)
    gap = (cached - fresh).abs().max().item()
    if gap > 1e-5 + 1e-3 * fresh.abs().max().item():  # fp32 reruns differ by ~1e-6; TF32 by ~1e-4 of scale
        raise ValueError(
            f"model.teacher_cache: the cached teacher logits differ from the teacher's on this training "
            f"batch (max difference {gap:.3g}): the training inputs are not deterministic (augmentation, "
            "random truncation) or the teacher changed during training; drop teacher_cache"
        )


def _check_source(datamodule, module: L.LightningModule):
    if datamodule is None or not all(hasattr(datamodule, name) for name in NEEDED):
        raise ValueError(
            "model.teacher_cache: the datamodule must identify its training rows (batches with "
            f"'{EXAMPLE_ID}', and {' and '.join(n + '()' for n in NEEDED)}, as TextClassificationDataModule "
            "has); drop teacher_cache or add them to your datamodule"
        )
    if not getattr(datamodule, "deterministic_inputs", True):
        raise ValueError(
            "model.teacher_cache: the datamodule says its inputs are not deterministic "
            "(deterministic_inputs=False, e.g. augmentation): cached outputs would not match; "
            "drop teacher_cache"
        )
    module.train()  # the mode training runs in (Lightning sets it later): the teacher's dropout must be off
    awake = [name for name, m in module.teachers.named_modules() if isinstance(m, nn.Dropout) and m.training]
    if awake:
        raise ValueError(
            f"model.teacher_cache: the teacher's dropout is active in training ({awake[0]}): its outputs "
            "change every pass; keep the teacher in eval mode or drop teacher_cache"
        )
    return datamodule


@torch.no_grad()
def _teacher_batches(module: L.LightningModule, loader):
    for batch in tqdm(loader, desc="teacher cache", unit="batch"):
        batch = {k: v.to(module.device) for k, v in batch.items()}
        yield batch[EXAMPLE_ID], module.teacher_logits(batch)

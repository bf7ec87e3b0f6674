"""Teacher-output cache: the frozen teacher's logits for every training row, computed once, kept on disk.

Rows are found by ``example_id`` (their position in the training set). A cache lives in a folder named
after a fingerprint of everything its values depend on (teacher weights and config, the rows' model
inputs, the mixture settings, ``top_k``), so a changed teacher, tokenizer, data or preprocessing never
reads a stale cache: it gets a new folder. Values are memory-mapped ``.npy`` files (no pickle).

Example:
    >>> import torch
    >>> from compress.distill.teacher_cache import CachedLogits, write_cache
    >>> import tempfile
    >>> folder = tempfile.mkdtemp() + "/cache"
    >>> batches = [(torch.tensor([1, 0]), torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]]))]
    >>> write_cache(folder, batches, rows=2, classes=3, top_k=2)
    >>> CachedLogits(folder).lookup(torch.tensor([1])).tolist()  # row 1 keeps 2.0 and 0.5; -1.0 dropped
    [[0.5, -9999.5, 2.0]]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

FORMAT = 1
FILL_BELOW = 1e4  # dropped classes sit this far below the row's smallest kept logit: softmax weight 0


@dataclass
class TeacherCache:
    """Settings of the teacher-output cache of `DistillationModule` (``teacher_cache=TeacherCache()``).

    Args:
        directory: where caches live, one sub-folder per fingerprint (default:
            ``<trainer.default_root_dir>/teacher_cache``); share it between runs to reuse caches.
        top_k: keep only the k largest logits per row (for large label sets/vocabularies); the other
            classes get zero teacher probability. ``None`` keeps all.
        verify: at each epoch's first batch, compare the cache with the teacher on that batch and stop
            with an error when they differ (inputs that are not deterministic, e.g. augmentation).
    """

    directory: str | None = None
    top_k: int | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"teacher_cache.top_k: {self.top_k!r} must be a positive count or null (all)")


def fingerprint_model(model: nn.Module) -> str:
    """sha256 of a model's config and of every parameter and buffer (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def cache_key(**parts) -> str:
    """A short hash of JSON-serialisable ``parts`` (fingerprints and settings) naming a cache folder."""
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def write_cache(
    folder: str | Path, batches: Iterable[tuple[Tensor, Tensor]], rows: int, classes: int, top_k: int | None
) -> None:
    """Store ``(example_ids, logits)`` batches covering ids ``0..rows-1`` in ``folder``, all or nothing.

    The files are written through `atomic_output`, so an interrupted or failed build leaves no cache
    behind, and a finished one is never overwritten.
    """
    from compress.export.folder import atomic_output  # here: the export package costs seconds to import

    width = classes if top_k is None else min(top_k, classes)
    with atomic_output(folder) as staging:
        values = np.lib.format.open_memmap(staging / "values.npy", "w+", np.float32, (rows, width))
        indices = (
            None
            if width == classes
            else np.lib.format.open_memmap(staging / "indices.npy", "w+", np.int64, (rows, width))
        )
        seen = np.zeros(rows, dtype=bool)
        for ids, logits in batches:
            ids = ids.cpu().numpy()
            logits = logits.detach().float().cpu()
            if indices is not None:
                logits, kept = logits.topk(width, dim=-1)
                indices[ids] = kept.numpy()
            values[ids] = logits.numpy()
            seen[ids] = True
        if not seen.all():
            raise ValueError(
                f"teacher_cache: the cache data loader gave {int(seen.sum())} of {rows} training rows; "
                "it must yield every example_id once"
            )
        for array in (values, indices):
            if array is not None:
                array.flush()
        meta = {"format": FORMAT, "rows": rows, "classes": classes, "top_k": top_k}
        (staging / "meta.json").write_text(json.dumps(meta))


class CachedLogits:
    """A finished cache folder, memory-mapped: ``lookup(example_ids)`` gives the teacher's logits."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.values = np.load(folder / "values.npy", mmap_mode="r", allow_pickle=False)
        top_k = folder / "indices.npy"
        self.indices = np.load(top_k, mmap_mode="r", allow_pickle=False) if top_k.exists() else None

    def lookup(self, example_ids: Tensor) -> Tensor:
        """Logits ``(len(ids), classes)``; with ``top_k``, the dropped classes far below the kept ones."""
        ids = example_ids.cpu().numpy()
        values = torch.from_numpy(np.ascontiguousarray(self.values[ids]))
        if self.indices is None:
            return values
        full = (values.min(dim=-1, keepdim=True).values - FILL_BELOW).expand(-1, self.meta["classes"])
        kept = torch.from_numpy(np.ascontiguousarray(self.indices[ids]))
        return full.clone().scatter_(-1, kept, values)

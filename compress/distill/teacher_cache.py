"""Teacher-output cache: the frozen teacher's logits for every training row, computed once, kept on disk.

Rows are found by ``example_id`` (their position in the training set). A cache lives in a folder named
after a fingerprint of everything its values depend on (teacher weights and config, the rows' model
inputs, the mixture settings, ``top_k``), so a changed teacher, tokenizer, data or preprocessing never
reads a stale cache: it gets a new folder. Values are memory-mapped ``.npy`` files (no pickle).

A classifier's row is one vector of logits; a causal LM's is one per token (``positions`` of them, the
block size). With ``top_k`` a row keeps its k largest logits (float32), their indices (int32) and the
log of its softmax normaliser, so the probability mass outside the top k is known exactly: ``tail=
"uniform"`` spreads it evenly over the other classes/tokens (the kept probabilities are the teacher's),
``tail="none"`` gives them none. A causal LM's token then takes ``8·k + 4`` bytes instead of ``4·V``
(SmolLM2, V = 49,152, k = 64: 516 B instead of 196,608 B).

Example:
    >>> import torch
    >>> from compress.distill.teacher_cache import CachedLogits, write_cache
    >>> import tempfile
    >>> folder = tempfile.mkdtemp() + "/cache"
    >>> batches = [(torch.tensor([1, 0]), torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]]))]
    >>> write_cache(folder, batches, rows=2, classes=3, top_k=2)
    >>> CachedLogits(folder, tail="none").lookup(torch.tensor([1])).tolist()  # keeps 2.0, 0.5; -1.0 dropped
    [[0.5, -9999.5, 2.0]]
    >>> [round(v, 4) for v in CachedLogits(folder).lookup(torch.tensor([1]))[0].tolist()]  # mass kept
    [0.5, -1.0, 2.0]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

FORMAT = 2  # 2: int32 indices, the softmax normaliser of top-k rows, per-token rows
FILL_BELOW = 1e4  # dropped classes sit this far below the row's smallest kept logit: softmax weight 0


@dataclass
class TeacherCache:
    """Settings of the teacher-output cache of `DistillationModule` (``teacher_cache=TeacherCache()``).

    Args:
        directory: where caches live, one sub-folder per fingerprint (default:
            ``<trainer.default_root_dir>/teacher_cache``); share it between runs to reuse caches.
        top_k: keep only the k largest logits per row (per token for a causal LM; for large label sets
            and vocabularies). ``None`` keeps all.
        tail: with ``top_k``, what the other classes get: ``uniform`` shares the teacher's remaining
            probability mass evenly among them (the kept probabilities stay exact), ``none`` gives them
            zero probability (the kept ones renormalised).
        verify: at each epoch's first batch, compare the cache with the teacher on that batch and stop
            with an error when they differ (inputs that are not deterministic, e.g. augmentation).
    """

    directory: str | None = None
    top_k: int | None = None
    tail: Literal["uniform", "none"] = "uniform"
    verify: bool = True

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"teacher_cache.top_k: {self.top_k!r} must be a positive count or null (all)")
        if self.tail not in ("uniform", "none"):
            raise ValueError(f"teacher_cache.tail: {self.tail!r} must be 'uniform' or 'none'")


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
    folder: str | Path,
    batches: Iterable[tuple[Tensor, Tensor]],
    rows: int,
    classes: int,
    top_k: int | None,
    positions: int | None = None,
) -> None:
    """Store ``(example_ids, logits)`` batches covering ids ``0..rows-1`` in ``folder``, all or nothing.

    Logits are ``(B, classes)``, or ``(B, L, classes)`` with ``positions`` (a causal LM's tokens; rows
    shorter than ``positions`` are padded). The files are written through `atomic_output`, so an
    interrupted or failed build leaves no cache behind, and a finished one is never overwritten.
    """
    from compress.export.folder import atomic_output  # here: the export package costs seconds to import

    width = classes if top_k is None else min(top_k, classes)
    shape = (rows, width) if positions is None else (rows, positions, width)
    with atomic_output(folder) as staging:

        def array(name, dtype, array_shape):
            return np.lib.format.open_memmap(staging / f"{name}.npy", "w+", dtype, array_shape)

        arrays = {"values": array("values", np.float32, shape)}
        if width < classes:
            arrays.update(
                indices=array("indices", np.int32, shape), log_norm=array("log_norm", np.float32, shape[:-1])
            )
        seen = np.zeros(rows, dtype=bool)
        for ids, logits in batches:
            ids = ids.cpu().numpy()
            for name, part in _row_parts(logits.detach().float().cpu(), width).items():
                if positions is not None:  # a batch's tokens go into the first positions of the block
                    arrays[name][ids, : part.shape[1]] = part.numpy()
                else:
                    arrays[name][ids] = part.numpy()
            seen[ids] = True
        if not seen.all():
            raise ValueError(
                f"teacher_cache: the cache data loader gave {int(seen.sum())} of {rows} training rows; "
                "it must yield every example_id once"
            )
        for array in arrays.values():
            array.flush()
        meta = {"format": FORMAT, "rows": rows, "classes": classes, "top_k": top_k, "positions": positions}
        (staging / "meta.json").write_text(json.dumps(meta))


def _row_parts(logits: Tensor, width: int) -> dict[str, Tensor]:
    """The stored arrays of a batch: all logits, or the top ``width``, their indices and the normaliser."""
    if width == logits.shape[-1]:
        return {"values": logits}
    kept = logits.topk(width, dim=-1)
    return {"values": kept.values, "indices": kept.indices.int(), "log_norm": logits.logsumexp(-1)}


class CachedLogits:
    """A finished cache folder, memory-mapped: ``lookup(example_ids)`` gives the teacher's logits.

    Args:
        folder: the cache folder.
        tail: for top-k caches, the logits of the other classes (see `TeacherCache.tail`).
    """

    def __init__(self, folder: str | Path, tail: str = "uniform") -> None:
        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.tail = tail
        self.arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            for name in ("values", "indices", "log_norm")
            if (folder / f"{name}.npy").exists()
        }

    def lookup(self, example_ids: Tensor, length: int | None = None) -> Tensor:
        """Logits ``(len(ids), classes)``, or ``(len(ids), length, classes)`` for per-token rows (their
        first ``length`` tokens); with ``top_k``, the other classes per `TeacherCache.tail`."""
        ids = example_ids.cpu().numpy()
        parts = {name: self._rows(array, ids, length) for name, array in self.arrays.items()}
        values = parts["values"]
        if "indices" not in parts:
            return values
        classes = self.meta["classes"]
        if self.tail == "uniform":
            kept_mass = (values.logsumexp(-1) - parts["log_norm"]).exp()
            rest = (1.0 - kept_mass).clamp(min=1e-30) / (classes - values.shape[-1])
            fill = parts["log_norm"] + rest.log()
        else:
            fill = values.min(dim=-1).values - FILL_BELOW
        full = fill.unsqueeze(-1).expand(*values.shape[:-1], classes)
        return full.clone().scatter_(-1, parts["indices"].long(), values)

    def _rows(self, array: np.ndarray, ids: np.ndarray, length: int | None) -> Tensor:
        per_token = length is not None and self.meta["positions"] is not None and array.ndim >= 2
        return torch.from_numpy(np.ascontiguousarray(array[ids, :length] if per_token else array[ids]))


def bytes_per_row(classes: int, top_k: int | None) -> int:
    """Bytes the cache stores per row, or per token for per-token rows."""
    return 4 * classes if top_k is None or top_k >= classes else 8 * top_k + 4

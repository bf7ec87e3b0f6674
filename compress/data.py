"""`TextClassificationDataModule`: offline or `datasets` text, stratified splits, transfer set, padding.

Example:
    >>> from compress.data import TextClassificationDataModule
    >>> dm = TextClassificationDataModule("rotten_tomatoes", max_train_examples=200, transfer_fraction=0.5)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.train_dataloader()))
    >>> sorted(batch), dm.num_labels
    (['attention_mask', 'example_id', 'input_ids', 'labels', 'token_type_ids'], 2)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from functools import cached_property

import datasets
import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, DistributedSampler
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from compress.assets import resolve_model_source
from compress.datasources import load_source

UNLABELLED = -100  # label of transfer-set rows: the student learns them from the teacher only
TEACHER_PREFIX = "teacher_"
EXAMPLE_ID = "example_id"  # position of a training row in the train split: the teacher cache's key


class TextClassificationDataModule(L.LightningDataModule):
    """Text classification data for Lightning: deterministic stratified train/validation/test splits.

    Args:
        source: ``rotten_tomatoes``, ``bbc_news``, ``tweets`` (offline), a local data file, or a
            `datasets.load_dataset` name.
        tokenizer: the student's tokenizer: a folder, an offline alias (``minilm-l6``) or a hub id.
        teacher_tokenizer: the teacher's, when it differs; the batch then carries ``teacher_*`` inputs.
        data_files: files for a builder ``source`` such as ``"csv"``.
        split: split of the loaded dataset to read; compress re-splits it.
        text_column: column with the text.
        label_column: column with the label.
        label_names: class names in id order (default: labels found, sorted; built-ins have their own).
        test_size: test rows, as a fraction of all rows or a count.
        val_size: validation rows, as a fraction of the rest or a count.
        max_train_examples: keep at most this many training rows (stratified), before the transfer split.
        max_eval_examples: keep at most this many validation and test rows each (stratified).
        transfer_fraction: fraction of training rows whose labels are hidden (label -100): the student
            learns them from the teacher only. In [0, 1).
        include_transfer: keep the transfer rows in the training set; ``False`` trains on the labelled
            rows only (the same rows for every value of this flag).
        max_length: truncation length in tokens; batches are padded to their longest row only.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        seed: seed of every split.
        num_workers: DataLoader workers.
        bucket_by_length: form training batches of rows of similar length (sorted within spans of 50
            shuffled batches, batches then shuffled): far less padding, so faster steps on the same rows.
    """

    def __init__(
        self,
        source: str = "rotten_tomatoes",
        tokenizer: str = "minilm-l6",
        teacher_tokenizer: str | None = None,
        data_files: str | list[str] | None = None,
        split: str = "train",
        text_column: str = "text",
        label_column: str = "label",
        label_names: list[str] | None = None,
        test_size: int | float = 0.1,
        val_size: int | float = 0.1,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        transfer_fraction: float = 0.0,
        include_transfer: bool = True,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        bucket_by_length: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_settings(self.hparams)
        self.splits: dict[str, datasets.Dataset] = {}

    @cached_property
    def raw(self) -> datasets.Dataset:
        """All rows of the source, as ``text`` and ``label`` (ClassLabel)."""
        h = self.hparams
        return load_source(
            h.source,
            data_files=h.data_files,
            split=h.split,
            text_column=h.text_column,
            label_column=h.label_column,
            label_names=h.label_names,
        )

    @property
    def label_names(self) -> list[str]:
        return list(self.raw.features["label"].names)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return _load_tokenizer(self.hparams.tokenizer, "data.tokenizer")

    @cached_property
    def teacher_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The teacher's tokenizer when it differs from the student's, else None (inputs are shared)."""
        if self.hparams.teacher_tokenizer is None:
            return None
        teacher = _load_tokenizer(self.hparams.teacher_tokenizer, "data.teacher_tokenizer")
        same = type(teacher) is type(self.tokenizer) and teacher.get_vocab() == self.tokenizer.get_vocab()
        return None if same else teacher

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        raw_splits = split_rows(self.raw, self.hparams)
        train = raw_splits["train"]
        raw_splits["train"] = train.add_column(EXAMPLE_ID, list(range(len(train))))
        self.splits = {name: self._tokenize(ds) for name, ds in raw_splits.items()}

    def _tokenize(self, ds: datasets.Dataset) -> datasets.Dataset:
        def encode(batch):
            out = dict(self.tokenizer(batch["text"], truncation=True, max_length=self.hparams.max_length))
            if self.teacher_tokenizer is not None:
                teacher = self.teacher_tokenizer(
                    batch["text"], truncation=True, max_length=self.hparams.max_length
                )
                out.update({TEACHER_PREFIX + k: v for k, v in teacher.items()})
            return out

        ds = ds.map(encode, batched=True, remove_columns=["text"], desc="tokenize")
        return ds.rename_column("label", "labels").with_format("torch")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def cache_dataloader(self) -> DataLoader:
        """Every training row once, shortest first (little padding): the teacher cache is built from it."""
        self.setup()
        train = self.splits["train"]
        lengths = _lengths(train)
        order = sorted(range(len(train)), key=lengths.__getitem__)
        collate = DynamicPadding(self.tokenizer, self.teacher_tokenizer)
        return DataLoader(train, self.hparams.eval_batch_size, sampler=order, collate_fn=collate)

    def train_fingerprint(self) -> str:
        """A hash of the training rows' model inputs and ids, in order (labels excluded)."""
        self.setup()
        return fingerprint_rows(self.splits["train"])

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size)

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        self.setup()
        dataset = self.splits[split]
        sampler = None
        if shuffle:
            lengths = _lengths(dataset) if self.hparams.bucket_by_length else None
            ranks = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
            sampler = EpochShuffle(len(dataset), self.hparams.seed, lengths, batch_size, *ranks)
        collate = DynamicPadding(self.tokenizer, self.teacher_tokenizer)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.hparams.num_workers,
        )


class EpochShuffle(DistributedSampler):
    """A permutation drawn from ``(seed, epoch)`` alone: the same order after a resume as without one.

    Lightning calls ``set_epoch`` at each epoch start. ``resume(epoch, start)`` makes the next pass over
    ``epoch`` begin at position ``start`` of this process's rows: a run resumed mid-epoch sees the rows
    it had not seen yet, as an uninterrupted run would. With ``lengths``, each span of ``BUCKET_SPAN``
    global batches of the permutation is sorted by length and cut into batches, and the full batches are
    shuffled (a short last batch stays last). Under DDP (``num_replicas`` > 1) every global batch of
    ``batch_size x num_replicas`` rows is cut into one slice per rank, so the ranks together train on
    the rows one process would with the global batch size; the order is padded by repeating its start
    to whole global batches, as `DistributedSampler` pads. It is a `DistributedSampler` only so that
    Lightning uses it as it is instead of wrapping (and reshuffling) it.
    """

    BUCKET_SPAN = 50

    def __init__(  # DistributedSampler.__init__ is not called: it needs a dataset and a process group
        self,
        size: int,
        seed: int,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.size, self.seed, self.epoch = size, seed, 0
        self.lengths, self.batch_size = lengths, batch_size
        self.num_replicas, self.rank, self.shuffle, self.drop_last = num_replicas, rank, True, False
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, start: int) -> None:
        self._resume = (epoch, start) if start > 0 else None

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is not None:
            order = self._bucketed(order, generator)
        if self.num_replicas > 1:
            order = self._shard(order)
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] :]
        self._resume = None
        return iter(order)

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return self.size
        return -(-self.size // (self.batch_size * self.num_replicas)) * self.batch_size

    def _bucketed(self, order: list[int], generator: torch.Generator) -> list[int]:
        size = self.batch_size * self.num_replicas
        span = size * self.BUCKET_SPAN
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        short = batches.pop() if len(batches[-1]) < size else []
        shuffled = [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]
        return [i for batch in shuffled for i in batch] + short

    def _shard(self, order: list[int]) -> list[int]:
        step = self.batch_size * self.num_replicas
        total = -(-len(order) // step) * step
        order = (order * (total // len(order) + 1))[:total]
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [i for k in range(0, total, step) for i in order[k + lo : k + hi]]


class DynamicPadding:
    """Pads each batch to its own longest row, student and teacher inputs each with their tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase | None):
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        plain = ("labels", EXAMPLE_ID)
        student = [
            {k: v for k, v in r.items() if not k.startswith(TEACHER_PREFIX) and k not in plain} for r in rows
        ]
        batch = dict(self.tokenizer.pad(student, return_tensors="pt"))
        for key in (k for k in plain if k in rows[0]):
            batch[key] = torch.stack([torch.as_tensor(r[key]) for r in rows])
        if self.teacher_tokenizer is not None:
            teacher = [
                {k[len(TEACHER_PREFIX) :]: v for k, v in r.items() if k.startswith(TEACHER_PREFIX)}
                for r in rows
            ]
            padded = self.teacher_tokenizer.pad(teacher, return_tensors="pt")
            batch.update({TEACHER_PREFIX + k: v for k, v in padded.items()})
        return batch


def _lengths(ds: datasets.Dataset) -> list[int]:
    return ds.with_format("arrow")[:].column("input_ids").combine_chunks().value_lengths().to_pylist()


def fingerprint_rows(ds: datasets.Dataset) -> str:
    """sha256 of every column but ``labels``, row by row in order (content, not the cache-file history)."""
    digest = hashlib.sha256()
    table = ds.with_format("arrow")[:]
    for name in sorted(c for c in table.column_names if c != "labels"):
        column = table.column(name).combine_chunks()
        digest.update(name.encode())
        if hasattr(column, "offsets"):  # token lists: lengths, then the tokens
            digest.update(column.value_lengths().to_numpy(zero_copy_only=False).tobytes())
            column = column.flatten()
        digest.update(column.to_numpy(zero_copy_only=False).tobytes())
    return digest.hexdigest()


def split_rows(raw: datasets.Dataset, h) -> dict[str, datasets.Dataset]:
    """Deterministic stratified train/validation/test splits, limits and the transfer set, from ``h.seed``."""
    rest, test = _stratified_split(raw, h.test_size, h.seed, "test_size")
    train, val = _stratified_split(rest, h.val_size, h.seed, "val_size")
    train = _stratified_take(train, h.max_train_examples, h.seed)
    val, test = (_stratified_take(ds, h.max_eval_examples, h.seed) for ds in (val, test))
    train = train.cast_column("label", datasets.Value("int64"))
    if h.transfer_fraction > 0:
        labelled, transfer = _stratified_split(train, h.transfer_fraction, h.seed, "transfer_fraction")
        transfer = transfer.map(lambda b: {"label": [UNLABELLED] * len(b["label"])}, batched=True)
        train = datasets.concatenate_datasets([labelled, transfer]) if h.include_transfer else labelled
    splits = {"train": train, "validation": val, "test": test}
    for name, ds in splits.items():
        if len(ds) == 0:
            raise ValueError(f"data: the {name} split is empty; lower test_size/val_size or use more rows")
    return splits


def _stratified_split(ds: datasets.Dataset, size: float | int, seed: int, field: str):
    """(rest, part) with ``part`` holding ``size`` rows (fraction or count), class proportions kept."""
    count = round(size * len(ds)) if isinstance(size, float) else size
    if count <= 0 or count >= len(ds):
        raise ValueError(
            f"data.{field}: {size!r} leaves an empty split of {len(ds)} rows; choose a smaller value"
        )
    stratify = "label" if isinstance(ds.features["label"], datasets.ClassLabel) else None
    if stratify is None:  # after the int64 cast: stratify through a temporary ClassLabel column
        names = [str(i) for i in range(max(ds["label"]) + 1)]
        ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    try:
        parts = ds.train_test_split(test_size=count, stratify_by_column="label", seed=seed)
    except ValueError as err:
        raise ValueError(
            f"data.{field}: cannot split {len(ds)} rows by class ({err}); use more rows"
        ) from err
    if stratify is None:
        parts = {k: v.cast_column("label", datasets.Value("int64")) for k, v in parts.items()}
    return parts["train"], parts["test"]


def _stratified_take(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return _stratified_split(ds, limit, seed, "max_examples")[1]


def _load_tokenizer(source: str, field: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(resolve_model_source(source))
    except (OSError, FileNotFoundError, ValueError) as err:
        raise ValueError(f"{field}: cannot load a tokenizer from {source!r} ({err})") from err


def _check_settings(h) -> None:
    for field in ("test_size", "val_size"):
        size = h[field]
        if isinstance(size, float) and not 0 < size < 1 or isinstance(size, int) and size < 1:
            raise ValueError(f"data.{field}: {size!r} must be a fraction in (0, 1) or a positive row count")
    for field in ("max_train_examples", "max_eval_examples"):
        if h[field] is not None and h[field] < 1:
            raise ValueError(f"data.{field}: {h[field]!r} must be a positive row count or null (no limit)")
    if not 0 <= h.transfer_fraction < 1:
        raise ValueError(f"data.transfer_fraction: {h.transfer_fraction!r} must be in [0, 1)")
    if h.max_length < 2:
        raise ValueError(f"data.max_length: {h.max_length!r} must be at least 2 tokens")
    for field in ("batch_size", "eval_batch_size"):
        if h[field] < 1:
            raise ValueError(f"data.{field}: {h[field]!r} must be a positive number of rows")

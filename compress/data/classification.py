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

from functools import cached_property

import datasets
import lightning.pytorch as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from compress.data.collate import DynamicPadding
from compress.data.columns import EXAMPLE_ID, TEACHER_PREFIX
from compress.data.fingerprint import fingerprint_rows, token_lengths
from compress.data.sampling import EpochShuffle
from compress.data.sources import load_source
from compress.data.splits import check_split_settings, split_rows
from compress.data.tokenizer import load_tokenizer, same_tokenizer


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
        seed: seed of every split (and of the training order unless ``order_seed`` is given).
        order_seed: seed of the training order alone: runs that differ only in it see the same splits.
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
        order_seed: int | None = None,
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
        return load_tokenizer(self.hparams.tokenizer, "data.tokenizer")

    @cached_property
    def teacher_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The teacher's tokenizer when it differs from the student's, else None (inputs are shared)."""
        if self.hparams.teacher_tokenizer is None:
            return None
        teacher = load_tokenizer(self.hparams.teacher_tokenizer, "data.teacher_tokenizer")
        return None if same_tokenizer(teacher, self.tokenizer) else teacher

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
        lengths = token_lengths(train)
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
            lengths = token_lengths(dataset) if self.hparams.bucket_by_length else None
            ranks = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
            order = self.hparams.seed if self.hparams.order_seed is None else self.hparams.order_seed
            sampler = EpochShuffle(len(dataset), order, lengths, batch_size, *ranks)
        collate = DynamicPadding(self.tokenizer, self.teacher_tokenizer)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.hparams.num_workers,
        )


def _check_settings(h) -> None:
    check_split_settings(h)
    if h.max_length < 2:
        raise ValueError(f"data.max_length: {h.max_length!r} must be at least 2 tokens")
    for field in ("batch_size", "eval_batch_size"):
        if h[field] < 1:
            raise ValueError(f"data.{field}: {h[field]!r} must be a positive number of rows")

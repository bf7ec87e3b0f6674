"""`LanguageModelingDataModule`: causal-LM data, split by document, packed into blocks or rendered as chats.

Plain text is tokenised document by document, each followed by eos, and cut into blocks of exactly
``block_size`` tokens; chat rows (``messages_column``, or ``prompt_column`` + ``response_column``) go
through the tokenizer's chat template, one conversation per row, and with ``completion_only`` only the
assistant's last turn is learned. Labels equal the inputs (-100 where not learned); the model shifts them.

Example:
    >>> from compress.data import LanguageModelingDataModule
    >>> dm = LanguageModelingDataModule("bbc_news", "smollm2-135m", block_size=64, max_train_documents=20,
    ...                                 max_eval_documents=10)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.train_dataloader()))
    >>> sorted(batch), batch["input_ids"].shape, dm.vocab_size
    (['attention_mask', 'example_id', 'input_ids', 'labels'], torch.Size([8, 64]), 49152)
"""

from __future__ import annotations

from functools import cached_property

import datasets
import lightning.pytorch as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from compress.data.blocks import pack_blocks, render_chats
from compress.data.causal_padding import CausalPadding
from compress.data.columns import EXAMPLE_ID
from compress.data.document_splits import check_document_split_settings, split_documents
from compress.data.fingerprint import fingerprint_rows
from compress.data.sampling import EpochShuffle
from compress.data.text_sources import load_documents
from compress.data.tokenizer import load_tokenizer, same_tokenizer


class LanguageModelingDataModule(L.LightningDataModule):
    """Causal language-modelling data for Lightning: deterministic splits by document, blocks or chats.

    Args:
        source: ``bbc_news``, ``tweets``, ``rotten_tomatoes`` (offline; their texts), a local ``.txt``
            (one document per paragraph), ``.csv``/``.json``/``.jsonl``/``.parquet`` file, or a
            `datasets.load_dataset` name.
        tokenizer: the student's tokenizer: a folder, an offline alias (``smollm2-135m``) or a hub id.
        teacher_tokenizer: the teacher's; it must be the same tokenizer (token-level distillation).
        data_files: files for a builder ``source`` such as ``"json"``.
        split: split of the loaded dataset to read; compress re-splits it by document.
        text_column: column with the documents (plain text mode).
        prompt_column: column with the user's prompt (chat mode, with ``response_column``).
        response_column: column with the assistant's answer.
        messages_column: column with whole conversations, lists of ``{"role", "content"}`` (chat mode).
        completion_only: in chat mode, learn the last (assistant) turn only: prompt labels are -100.
        block_size: tokens per block (plain text), the longest conversation kept (chat; cut beyond).
        test_size: test documents, as a fraction of all documents or a count.
        val_size: validation documents, as a fraction of all documents or a count.
        max_train_documents: keep at most this many training documents.
        max_eval_documents: keep at most this many validation and test documents each.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        seed: seed of the document split and of the training order.
        num_workers: DataLoader workers.
    """

    task = "causal_lm"
    deterministic_inputs = True  # the same rows every epoch: teacher outputs can be cached

    def __init__(
        self,
        source: str = "bbc_news",
        tokenizer: str = "smollm2-135m",
        teacher_tokenizer: str | None = None,
        data_files: str | list[str] | None = None,
        split: str = "train",
        text_column: str = "text",
        prompt_column: str | None = None,
        response_column: str | None = None,
        messages_column: str | None = None,
        completion_only: bool = True,
        block_size: int = 128,
        test_size: int | float = 0.05,
        val_size: int | float = 0.05,
        max_train_documents: int | None = None,
        max_eval_documents: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_settings(self.hparams)
        self.splits: dict[str, datasets.Dataset] = {}

    @property
    def chat(self) -> bool:
        """Whether rows are conversations (rendered with the chat template) rather than plain text."""
        return self.hparams.messages_column is not None or self.hparams.prompt_column is not None

    @cached_property
    def documents(self) -> datasets.Dataset:
        """All documents of the source: a ``text`` column, or a ``messages`` column in chat mode."""
        h = self.hparams
        return load_documents(
            h.source,
            data_files=h.data_files,
            split=h.split,
            text_column=h.text_column,
            prompt_column=h.prompt_column,
            response_column=h.response_column,
            messages_column=h.messages_column,
        )

    @property
    def num_labels(self) -> None:
        """None: a causal LM predicts tokens, it has no classifier head (the CLI links this to the model)."""
        return None

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.hparams.tokenizer, "data.tokenizer")

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @cached_property
    def teacher_tokenizer(self) -> None:
        """None: the teacher reads the student's inputs. A different teacher tokenizer is refused."""
        h = self.hparams
        if h.teacher_tokenizer is None:
            return None
        teacher = load_tokenizer(h.teacher_tokenizer, "data.teacher_tokenizer")
        if not same_tokenizer(teacher, self.tokenizer):
            raise ValueError(
                f"data.teacher_tokenizer: {h.teacher_tokenizer!r} differs from data.tokenizer "
                f"{h.tokenizer!r}; token-level distillation needs one vocabulary and cross-tokenizer KD is "
                "not supported yet: use the teacher's tokenizer for the student (set data.tokenizer to it) "
                "and drop data.teacher_tokenizer"
            )
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        _ = self.teacher_tokenizer  # refuses a different one before any tokenising
        documents = split_documents(self.documents, self.hparams)
        splits = {name: self._rows(docs, name) for name, docs in documents.items()}
        train = splits["train"]
        splits["train"] = train.add_column(EXAMPLE_ID, list(range(len(train))))
        self.splits = {name: ds.with_format("torch") for name, ds in splits.items()}

    def _rows(self, docs: datasets.Dataset, split: str) -> datasets.Dataset:
        h = self.hparams
        if self.chat:
            return render_chats(docs, self.tokenizer, h.block_size, h.completion_only, split)
        return pack_blocks(docs, self.tokenizer, h.block_size, split)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        ranks = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        h = self.hparams
        sampler = EpochShuffle(len(self.splits["train"]), h.seed, None, h.batch_size, *ranks)
        return self._loader("train", h.batch_size, sampler)

    def cache_dataloader(self) -> DataLoader:
        """Every training row once, in order: the teacher cache is built from it."""
        return self._loader("train", self.hparams.eval_batch_size)

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

    def _loader(self, split: str, batch_size: int, sampler: EpochShuffle | None = None) -> DataLoader:
        self.setup()
        return DataLoader(
            self.splits[split],
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=CausalPadding(self.tokenizer),
            num_workers=self.hparams.num_workers,
        )


def _check_settings(h) -> None:
    check_document_split_settings(h)
    if h.block_size < 2:
        raise ValueError(f"data.block_size: {h.block_size!r} must be at least 2 tokens")
    for field in ("batch_size", "eval_batch_size"):
        if h[field] < 1:
            raise ValueError(f"data.{field}: {h[field]!r} must be a positive number of rows")
    if (h.prompt_column is None) != (h.response_column is None):
        raise ValueError(
            f"data.prompt_column/response_column: got {h.prompt_column!r} and {h.response_column!r}; chat "
            "rows from columns need both (a user prompt and the assistant's answer), or neither"
        )
    if h.messages_column is not None and h.prompt_column is not None:
        raise ValueError(
            f"data.messages_column: {h.messages_column!r} and data.prompt_column {h.prompt_column!r} are two "
            "ways to give chat rows; set one of them"
        )

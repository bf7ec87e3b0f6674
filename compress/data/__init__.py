"""`TextClassificationDataModule`: offline or `datasets` text, stratified splits, transfer set, padding.

`LanguageModelingDataModule`: causal-LM text split by document, packed into blocks or rendered as chats
(`language_modeling`). The pieces that are not specific to one task (sources, splits, the training order,
the collate functions, row fingerprints) live in their own modules beside them.

Example:
    >>> from compress.data import TextClassificationDataModule
    >>> dm = TextClassificationDataModule("rotten_tomatoes", max_train_examples=200, transfer_fraction=0.5)
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.train_dataloader()))
    >>> sorted(batch), dm.num_labels
    (['attention_mask', 'example_id', 'input_ids', 'labels', 'token_type_ids'], 2)
"""

from compress.data.classification import TextClassificationDataModule
from compress.data.collate import DynamicPadding
from compress.data.columns import EXAMPLE_ID, TEACHER_PREFIX, UNLABELLED
from compress.data.fingerprint import fingerprint_rows
from compress.data.language_modeling import LanguageModelingDataModule
from compress.data.sampling import EpochShuffle
from compress.data.sources import load_source
from compress.data.splits import split_rows

__all__ = [
    "EXAMPLE_ID",
    "TEACHER_PREFIX",
    "UNLABELLED",
    "DynamicPadding",
    "EpochShuffle",
    "LanguageModelingDataModule",
    "TextClassificationDataModule",
    "fingerprint_rows",
    "load_source",
    "split_rows",
]

"""What `compress export` reads besides the model: the tokenizer it ships, and real text to check it on.

Example:
    >>> tokenizer, field = shipped_tokenizer("minilm-l6", None)
    >>> field, len(tokenizer)
    ('model', 30522)
    >>> check_texts(None).origin
    '8 built-in English sentences (no data given)'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compress.assets import resolve_model_source
from compress.data import TextClassificationDataModule, split_rows
from compress.data.tokenizer import load_tokenizer
from compress.export.predictions import SAMPLE_TEXTS
from compress.export.tokenizer_fit import TOKENIZER_FIX
from compress.modules.checks import TOKENIZER_FILES, has_tokenizer_files

CHECK_ROWS = 16  # validation/test rows a check reads: enough to meet most of a task's frequent words


@dataclass
class CheckTexts:
    """Texts an export is checked on.

    Args:
        texts: the texts.
        origin: where they come from, for errors and the summary.
        max_length: longest tokenized text, in tokens (the data's ``max_length``).
    """

    texts: list[str]
    origin: str
    max_length: int = 128


def shipped_tokenizer(model: str | Path, tokenizer: str | None):
    """The tokenizer an export ships, and the setting that gave it: ``tokenizer`` (a folder or offline
    alias) when given, else the model folder's own.

    Raises:
        ValueError: the folder holds no tokenizer files (transformers would make one up) or cannot be read.
        FileNotFoundError: ``tokenizer`` is neither a folder nor an alias.
    """
    field, source = ("tokenizer", tokenizer) if tokenizer is not None else ("model", str(model))
    try:
        folder = resolve_model_source(source)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{field}: {err}") from err
    if Path(folder).is_dir() and not has_tokenizer_files(folder):
        raise ValueError(
            f"{field}: {source} holds no tokenizer files (none of {', '.join(TOKENIZER_FILES)}), as a folder "
            "written by model.save_pretrained(dir) alone; transformers would make up a near-empty "
            "tokenizer and the export would read most words as unknown; " + TOKENIZER_FIX
        )
    return load_tokenizer(folder, field), field


def check_texts(data: dict | None, rows: int = CHECK_ROWS) -> CheckTexts:
    """Up to ``rows`` validation (then test) texts of ``data``, the `TextClassificationDataModule` settings
    (flat, or as ``{class_path, init_args}``); without data, `SAMPLE_TEXTS`."""
    if not data:
        return CheckTexts(
            list(SAMPLE_TEXTS), f"{len(SAMPLE_TEXTS)} built-in English sentences (no data given)"
        )
    datamodule = TextClassificationDataModule(**data_settings(data))
    splits = split_rows(datamodule.raw, datamodule.hparams)
    texts = [t for t in [*splits["validation"]["text"], *splits["test"]["text"]] if t.strip()][:rows]
    return CheckTexts(texts, f"{len(texts)} validation/test texts of data", datamodule.hparams.max_length)


def data_settings(data: dict) -> dict:
    """The init arguments of ``data``, given flat or as ``{class_path, init_args}``."""
    return dict(data.get("init_args") or {}) if "class_path" in data else dict(data)

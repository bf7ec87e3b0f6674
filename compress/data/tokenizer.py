"""Tokenizer loading for the DataModules: a folder, an offline alias or a hub id, errors naming the field.

Example:
    >>> from compress.data.tokenizer import load_tokenizer, same_tokenizer
    >>> student = load_tokenizer("minilm-l6", "data.tokenizer")
    >>> same_tokenizer(student, load_tokenizer("minilm-l6", "data.teacher_tokenizer"))
    True
"""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from compress.assets import resolve_model_source


def load_tokenizer(source: str, field: str) -> PreTrainedTokenizerBase:
    """Loads the tokenizer of ``source``; a ValueError names the setting ``field`` when it cannot."""
    try:
        return AutoTokenizer.from_pretrained(resolve_model_source(source))
    except (OSError, FileNotFoundError, ValueError) as err:
        raise ValueError(f"{field}: cannot load a tokenizer from {source!r} ({err})") from err


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether ``a`` and ``b`` turn text into the same ids: same class, same vocabulary."""
    return type(a) is type(b) and a.get_vocab() == b.get_vocab()

"""Content fingerprints and token lengths of tokenized rows, read from their Arrow columns.

Example:
    >>> import datasets
    >>> from compress.data.fingerprint import fingerprint_rows, token_lengths
    >>> rows = datasets.Dataset.from_dict({"input_ids": [[101, 7, 102], [101, 102]], "labels": [0, 1]})
    >>> token_lengths(rows), len(fingerprint_rows(rows))
    ([3, 2], 64)
"""

from __future__ import annotations

import hashlib

import datasets


def token_lengths(ds: datasets.Dataset) -> list[int]:
    """The number of tokens of each row's ``input_ids``, in row order."""
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

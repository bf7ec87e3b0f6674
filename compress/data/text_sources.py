"""Raw documents for language modelling: plain ``text`` rows, or chat rows of ``messages``.

A source is a built-in corpus (its texts; labels dropped), a local ``.txt`` file (one document per
paragraph), a ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet`` file, or a `datasets.load_dataset` name
with ``data_files``. Chat rows come from a column of ``{"role", "content"}`` lists, or from a prompt and
a response column (a user turn and an assistant turn).

Example:
    >>> from compress.data.text_sources import load_documents
    >>> docs = load_documents("bbc_news")
    >>> docs.column_names, len(docs)
    (['text'], 2225)
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

from compress.data.sources import BUILTIN_SOURCES, FILE_BUILDERS, load_external

# a plain text file is one document per paragraph (blank-line separated)
TEXT_FILE_BUILDERS = {**FILE_BUILDERS, ".txt": ("text", {"sample_by": "paragraph"})}
MESSAGES = datasets.Features(
    {"messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]}
)


def load_documents(
    source: str,
    *,
    data_files: str | Sequence[str] | None = None,
    split: str = "train",
    text_column: str = "text",
    prompt_column: str | None = None,
    response_column: str | None = None,
    messages_column: str | None = None,
) -> datasets.Dataset:
    """Loads a source into a Dataset with one column: ``text`` (plain text) or ``messages`` (chat).

    Args:
        source: built-in name, local data file, `datasets` builder name, or hub dataset name.
        data_files: files for a builder such as ``"json"``.
        split: which split of a multi-split dataset to read (compress makes its own splits from it).
        text_column: column holding the text (plain text mode).
        prompt_column: column holding the user's prompt (chat mode, with ``response_column``).
        response_column: column holding the assistant's answer.
        messages_column: column holding whole conversations as lists of ``{"role", "content"}``.
    """
    if source in BUILTIN_SOURCES:
        frame, _ = BUILTIN_SOURCES[source]()
        raw = datasets.Dataset.from_pandas(frame[["text"]], preserve_index=False)
    else:
        raw = load_external(source, data_files, split, TEXT_FILE_BUILDERS, "text")
    if messages_column is not None:
        return _conversations(raw, messages_column, source)
    if prompt_column is not None:
        return _prompt_response(raw, prompt_column, response_column, source)
    return _plain_text(raw, text_column, source)


def _check_column(ds: datasets.Dataset, field: str, column: str, source: str) -> None:
    if column not in ds.column_names:
        raise ValueError(
            f"data.{field}: column {column!r} not found in {source!r}; available: {ds.column_names}"
        )


def _plain_text(raw: datasets.Dataset, column: str, source: str) -> datasets.Dataset:
    _check_column(raw, "text_column", column, source)
    ds = raw.select_columns([column])
    # surrounding whitespace (a paragraph's newlines) is noise between documents that end in eos
    ds = ds.map(lambda b: {"text": [_stripped(t) for t in b[column]]}, batched=True, remove_columns=[column])
    return _non_empty(ds, lambda b: [bool(t) for t in b["text"]], "text_column", source)


def _prompt_response(raw: datasets.Dataset, prompt: str, response: str, source: str) -> datasets.Dataset:
    _check_column(raw, "prompt_column", prompt, source)
    _check_column(raw, "response_column", response, source)

    def to_messages(batch):
        pairs = zip(batch[prompt], batch[response], strict=True)
        return {"messages": [_turns(_stripped(p), _stripped(r)) for p, r in pairs]}

    ds = raw.select_columns([prompt, response])
    ds = ds.map(to_messages, batched=True, remove_columns=ds.column_names, features=MESSAGES)
    return _non_empty(ds, lambda b: [bool(m) for m in b["messages"]], "response_column", source)


def _conversations(raw: datasets.Dataset, column: str, source: str) -> datasets.Dataset:
    _check_column(raw, "messages_column", column, source)

    def to_messages(batch):
        return {"messages": [_messages(m, column, source) for m in batch[column]]}

    ds = raw.select_columns([column])
    ds = ds.map(to_messages, batched=True, remove_columns=[column], features=MESSAGES)
    return _non_empty(ds, lambda b: [bool(m) for m in b["messages"]], "messages_column", source)


def _turns(prompt: str, response: str) -> list[dict[str, str]]:
    if not prompt or not response:
        return []
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _messages(value, column: str, source: str) -> list[dict[str, str]]:
    """The conversation as plain ``{"role", "content"}`` dicts (extra keys dropped); [] when empty."""
    shape_ok = isinstance(value, list) or value is None
    turns = value or []
    if not shape_ok or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in turns):
        raise ValueError(
            f"data.messages_column: column {column!r} of {source!r} holds {value!r:.80}, not a list of "
            '{"role": ..., "content": ...} messages; point data.messages_column at such a column, or use '
            "data.prompt_column and data.response_column"
        )
    return [{"role": str(m["role"]), "content": str(m["content"] or "")} for m in turns]


def _stripped(text) -> str:
    return text.strip() if isinstance(text, str) else ""


def _non_empty(ds: datasets.Dataset, keep, field: str, source: str) -> datasets.Dataset:
    kept = ds.filter(keep, batched=True)
    if len(kept) == 0:
        raise ValueError(
            f"data.{field}: none of the {len(ds)} rows of {source!r} has text; point data.{field} at the "
            "column that holds it"
        )
    return kept

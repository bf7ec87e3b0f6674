"""Does the tokenizer an export ships belong to the model? Two checks that run before anything is written.

A folder written by ``model.save_pretrained(dir)`` alone holds no tokenizer, and transformers then makes
up an almost empty one (5 tokens for a BERT config): every word becomes [UNK], the export predicts one
class for every text, and the checks that compare the written model with the in-memory one still pass
(both read the same [UNK] ids). `check_tokenizer_size` compares the tokenizer with the model's input
embeddings; `check_known_tokens` counts the unknown token on real text.

Example:
    >>> from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    >>> from compress.assets import resolve_model_source
    >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6"))
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=1000))
    >>> check_tokenizer_size(tokenizer, model, "tokenizer")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: tokenizer: its tokenizer (...) has 30,522 tokens but the model has 1,000 embedding rows (...
    >>> check_known_tokens(tokenizer, ["the film was wonderful"], "tokenizer", "a test sentence")
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

TOKENIZER_FIX = (
    "pass --tokenizer <folder or alias of the tokenizer the model was trained with>, or save it with "
    "tokenizer.save_pretrained(dir)"
)
# Real tokenizers cover nearly all embedding rows: padding the vocabulary to a multiple of 64 or 128 for
# speed leaves a few percent unused (Qwen2: 0.2%, SmolLM2 and BERT: none), and a trimmed vocabulary trims
# the embeddings with it. A tokenizer with fewer tokens than half the rows is not the one the model learnt
# (the one transformers makes up for a folder without tokenizer files has 5), while a model whose rows
# were deliberately over-allocated twofold would be very unusual.
SMALLEST_COVERED_FRACTION = 0.5
# Ordinary text in the model's own language has well under 1% unknown tokens (WordPiece on English
# reviews: 0.0%); above half, the tokenizer cannot read the language at all.
LARGEST_UNKNOWN_FRACTION = 0.5


def embedding_rows(model: nn.Module) -> int:
    """Rows of the model's input embeddings: the ids it can read (``config.vocab_size`` as a fallback)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Embedding):
        return embeddings.num_embeddings
    return int(model.config.vocab_size)


def check_tokenizer_size(tokenizer, model: nn.Module, field: str) -> None:
    """Refuses a tokenizer with more tokens than the model has embedding rows, or with fewer than
    `SMALLEST_COVERED_FRACTION` of them.

    Args:
        tokenizer: the tokenizer the export would ship.
        model: the model it would ship with.
        field: the setting that gave the tokenizer (``model`` for the model folder's own), named in errors.
    """
    size, rows = len(tokenizer), embedding_rows(model)
    name = tokenizer.name_or_path or type(tokenizer).__name__
    if size > rows:
        raise ValueError(
            f"{field}: its tokenizer ({name}) has {size:,} tokens but the model has {rows:,} embedding rows "
            f"(ids from {rows:,} on would index past them: it is not the model's tokenizer); " + TOKENIZER_FIX
        )
    if size < SMALLEST_COVERED_FRACTION * rows:
        raise ValueError(
            f"{field}: its tokenizer ({name}) has {size:,} tokens, fewer than half of the model's {rows:,} "
            "embedding rows, so it is not the tokenizer the model was trained with (transformers makes up "
            "a near-empty one for a folder without tokenizer files); " + TOKENIZER_FIX
        )


def unknown_fraction(tokenizer, texts: Sequence[str]) -> float:
    """The fraction of the tokens of ``texts`` (special tokens left out) that are the unknown token."""
    if tokenizer.unk_token_id is None:  # byte-level tokenizers spell out anything
        return 0.0
    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in rows)
    unknown = sum(row.count(tokenizer.unk_token_id) for row in rows)
    return unknown / total if total else 0.0


def check_known_tokens(tokenizer, texts: Sequence[str], field: str, origin: str) -> None:
    """Refuses a tokenizer that reads more than `LARGEST_UNKNOWN_FRACTION` of the tokens of ``texts`` as
    its unknown token.

    Args:
        tokenizer: the tokenizer the export would ship.
        texts: real text of the task (or ordinary English sentences).
        field: the setting that gave the tokenizer, named in the error.
        origin: where ``texts`` come from, for the error (e.g. "16 validation/test texts of data").
    """
    fraction = unknown_fraction(tokenizer, texts)
    if fraction > LARGEST_UNKNOWN_FRACTION:
        name = tokenizer.name_or_path or type(tokenizer).__name__
        raise ValueError(
            f"{field}: its tokenizer ({name}, {len(tokenizer):,} tokens) reads {fraction:.0%} of the tokens "
            f"of {origin} as its unknown token {tokenizer.unk_token!r}; the export would predict from "
            "almost nothing; " + TOKENIZER_FIX
        )

"""Vocabulary trimming: keep only the embedding rows a task's corpus uses.

A small student spends most of its parameters on the word embeddings (MiniLM-L6: 11.7M of 22.7M), yet a
single task's corpus touches a fraction of the 30,522 WordPiece tokens. `used_token_ids` collects the ids
a corpus needs, `trim_vocabulary` returns a stock model and fast tokenizer over just those ids, renumbered
0..n-1, that save and load with plain transformers.

Text made only of kept tokens tokenizes to the same tokens (WordPiece is greedy longest-match, and every
match the original tokenizer made is still in the subset), so the trimmed pair gives the same logits.

Example:
    >>> from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    >>> from compress.assets import resolve_model_source
    >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6"))
    >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_attention_heads=2))
    >>> keep = used_token_ids(tokenizer, ["a moving film", "a dull plot"])
    >>> model, tokenizer = trim_vocabulary(model, tokenizer, keep)
    >>> model.config.vocab_size == len(tokenizer) == len(keep)
    True
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import islice

import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Loader-specific entries of `init_kwargs` that point at the source files or old ids.
_STALE_INIT_KWARGS = ("vocab", "vocab_file", "tokenizer_file", "added_tokens_decoder", "name_or_path")
# Settings a user may have changed after loading, so `init_kwargs` alone would miss them.
_RUNTIME_SETTINGS = ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces")


def used_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str],
    max_length: int | None = None,
    *,
    spell_out: bool = True,
    batch_size: int = 1024,
) -> list[int]:
    """Sorted ids of the tokens a corpus needs: those it tokenizes to, plus every special token.

    With ``spell_out`` (the default) every single-character token and its ``##x`` continuation are kept
    too, so a word the corpus never saw is spelled out in characters instead of collapsing to [UNK]. In
    the BERT uncased vocabulary these are 1,994 tokens (6.5%); on rotten_tomatoes' training texts the
    corpus already uses ~100 of them, so spelling out adds 1,895 rows (13,727 -> 15,622 kept, +0.73M
    parameters at width 384, 3% of MiniLM). Without them even held-out years such as "1982" become
    [UNK] (no ``##8`` seen), a silent loss; ``spell_out=False`` gives the smallest vocabulary when inputs
    are known to stay in-corpus.

    Args:
        tokenizer: a fast BERT-style WordPiece tokenizer.
        texts: the task's corpus (the training texts; evaluation texts add nothing the model learnt).
        max_length: truncate as training does, so tokens the model never sees are not kept.
        spell_out: keep all single-character tokens (see above).
        batch_size: texts tokenized per call.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from compress.assets import resolve_model_source
        >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6"))
        >>> ids = used_token_ids(tokenizer, ["a moving film"], spell_out=False)
        >>> tokenizer.convert_ids_to_tokens(ids)
        ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'film', 'moving']
    """
    _check_tokenizer(tokenizer)
    used = set(tokenizer.all_special_ids)
    iterator = iter(texts)
    while batch := list(islice(iterator, batch_size)):
        encoded = tokenizer(batch, truncation=max_length is not None, max_length=max_length)
        used.update(i for ids in encoded["input_ids"] for i in ids)
    if spell_out:
        used.update(i for token, i in tokenizer.get_vocab().items() if len(token.removeprefix("##")) == 1)
    return sorted(used)


def trim_vocabulary(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, keep_ids: Sequence[int]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A copy of ``model`` and ``tokenizer`` restricted to ``keep_ids``; token ``keep_ids[i]`` becomes id i.

    The model keeps its class; its input embeddings (and output embeddings, tied or not) hold the kept
    rows, ``config.vocab_size`` and the ``*_token_id`` fields follow. The tokenizer is a fast tokenizer of
    the same class with the same normalizer, pre-tokenizer, post-processor, special tokens and settings.
    Neither needs this project to load back.

    Args:
        model: a transformers model with `get_input_embeddings`.
        tokenizer: its fast BERT-style WordPiece tokenizer.
        keep_ids: ids to keep, in their new order; must include every special token (`used_token_ids`
            returns such a list).

    Raises:
        TypeError: the tokenizer is not a fast WordPiece tokenizer, or the model has no input embeddings.
        ValueError: ``keep_ids`` has duplicates, out-of-range ids, or misses a special token.

    Example:
        >>> from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
        >>> from compress.assets import resolve_model_source
        >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6"))
        >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_attention_heads=2))
        >>> keep = used_token_ids(tokenizer, ["a film"], spell_out=False)
        >>> model, small = trim_vocabulary(model, tokenizer, keep)
        >>> small("A film")["input_ids"], small.convert_ids_to_tokens([5, 6])
        ([2, 5, 6, 3], ['a', 'film'])
    """
    _check_tokenizer(tokenizer)
    embeddings = _input_embeddings(model)
    keep = _check_keep_ids(tokenizer, keep_ids, min(len(tokenizer), embeddings.num_embeddings))
    new_id = {old: new for new, old in enumerate(keep)}
    return _trim_model(model, embeddings, keep, new_id), _trim_tokenizer(tokenizer, keep, new_id)


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is None or not isinstance(backend.model, models.WordPiece):
        kind = f"a {type(backend.model).__name__} model" if backend is not None else "no fast backend"
        raise TypeError(
            f"tokenizer: {type(tokenizer).__name__} has {kind}; only BERT-style WordPiece fast tokenizers "
            "are supported. Load one with AutoTokenizer.from_pretrained (fast by default), or trim a "
            "BERT/MiniLM/DistilBERT-style model"
        )


def _input_embeddings(model: PreTrainedModel) -> torch.nn.Embedding:
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if not isinstance(embeddings, torch.nn.Embedding) or not hasattr(model, "resize_token_embeddings"):
        raise TypeError(
            f"model: {type(model).__name__} has no `get_input_embeddings()` returning an nn.Embedding; "
            "pass a transformers PreTrainedModel (e.g. from AutoModelForSequenceClassification)"
        )
    return embeddings


def _check_keep_ids(tokenizer: PreTrainedTokenizerBase, keep_ids: Sequence[int], size: int) -> list[int]:
    keep = [int(i) for i in keep_ids]
    outside = [i for i in keep if not 0 <= i < size]
    if outside:
        raise ValueError(
            f"keep_ids: ids {outside[:5]} are outside [0, {size}) (the tokenizer's and the embedding's "
            "size); pass ids from used_token_ids(tokenizer, texts)"
        )
    if len(set(keep)) != len(keep):
        repeated = sorted(i for i, n in Counter(keep).items() if n > 1)[:5]
        raise ValueError(f"keep_ids: ids {repeated} appear more than once; pass each id once")
    missing = sorted(set(tokenizer.all_special_ids) - set(keep))
    if missing:
        raise ValueError(
            f"keep_ids: special tokens {tokenizer.convert_ids_to_tokens(missing)} (ids {missing}) are "
            "missing; add tokenizer.all_special_ids (used_token_ids includes them)"
        )
    return keep


def _trim_model(
    model: PreTrainedModel, embeddings: torch.nn.Embedding, keep: list[int], new_id: dict[int, int]
) -> PreTrainedModel:
    index = torch.tensor(keep)
    old_input = embeddings.weight.detach()
    output = model.get_output_embeddings()
    old_output = None if output is None else (output.weight.detach(), getattr(output, "bias", None))
    trimmed = copy.deepcopy(model)
    # resize_token_embeddings handles config.vocab_size, tied heads and their bias; it keeps the first
    # rows, so the selected rows are written over them afterwards.
    trimmed.resize_token_embeddings(len(keep))
    with torch.no_grad():
        trimmed.get_input_embeddings().weight.copy_(old_input[index])
        if old_output is not None:
            head = trimmed.get_output_embeddings()
            head.weight.copy_(old_output[0][index])  # a no-op rewrite when tied to the input embeddings
            if old_output[1] is not None:
                head.bias.copy_(old_output[1].detach()[index])
    _remap_config_ids(trimmed.config, new_id)
    trimmed.get_input_embeddings().padding_idx = trimmed.config.pad_token_id
    return trimmed


def _remap_config_ids(config, new_id: dict[int, int]) -> None:
    for field, value in config.to_dict().items():
        if not field.endswith("_token_id") or value is None:
            continue
        ids = value if isinstance(value, list) else [value]
        if any(i not in new_id for i in ids):
            raise ValueError(f"keep_ids: config.{field}={value} is not kept; add it to keep_ids")
        setattr(config, field, [new_id[i] for i in ids] if isinstance(value, list) else new_id[value])


def _trim_tokenizer(
    tokenizer: PreTrainedTokenizerBase, keep: list[int], new_id: dict[int, int]
) -> PreTrainedTokenizerBase:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    position = {t: i for i, t in enumerate(tokenizer.convert_ids_to_tokens(keep))}
    # Added tokens go into the WordPiece vocabulary too (as BERT's own [CLS] etc. are): otherwise the
    # backend renumbers them after the vocabulary, away from their embedding rows.
    state["model"]["vocab"] = position
    state["added_tokens"] = [
        {**t, "id": position[t["content"]]} for t in state["added_tokens"] if t["content"] in position
    ]
    _remap_post_processor(state["post_processor"], position)
    if state.get("padding"):
        state["padding"]["pad_id"] = position[state["padding"]["pad_token"]]
    backend = Tokenizer.from_str(json.dumps(state))
    kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _STALE_INIT_KWARGS}
    kwargs |= {k: getattr(tokenizer, k) for k in _RUNTIME_SETTINGS if hasattr(tokenizer, k)}
    kwargs["added_tokens_decoder"] = {
        new_id[i]: t for i, t in tokenizer.added_tokens_decoder.items() if i in new_id
    }
    return type(tokenizer)(tokenizer_object=backend, **kwargs)


def _remap_post_processor(processor: dict | None, position: dict[str, int]) -> None:
    """Rewrites the special-token ids a post-processor inserts ([CLS], [SEP]) in place."""
    if processor is None:
        return
    kind = processor["type"]
    if kind == "Sequence":
        for step in processor["processors"]:
            _remap_post_processor(step, position)
    elif kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [position[t] for t in special["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for field in ("sep", "cls"):
            processor[field][1] = position[processor[field][0]]
    else:
        raise TypeError(
            f"tokenizer: post-processor {kind!r} is not supported; only BERT-style WordPiece tokenizers "
            "(TemplateProcessing or BertProcessing) are"
        )

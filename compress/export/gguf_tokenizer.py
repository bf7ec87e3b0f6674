"""The tokenizer metadata of a GGUF file (``tokenizer.*``): copied from a reference file, or built.

`tokenizer_fields` copies every ``tokenizer.*`` field of ``reference`` (the original model's GGUF) verbatim
when its token list equals the tokenizer's, else describes the Hugging Face tokenizer the way llama.cpp's
converter does (byte-level BPE only: tokens, token types, merges, special ids, add-bos/eos, chat
templates), the pre-tokenizer name taken from ``reference`` or, for GPT-2's plain byte-level split,
``gpt-2``. `verify_tokenizer` checks that the tokenizer transformers builds from a written file encodes
like the original.

Example:
    >>> from transformers import AutoTokenizer
    >>> from compress.assets import resolve_model_source
    >>> tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("tiny-llama"))
    >>> fields = {key: value for key, value, *_ in tokenizer_fields(tokenizer, vocab_size=1024)}
    >>> fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"], len(fields["tokenizer.ggml.tokens"])
    ('gpt2', 'gpt-2', 1024)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
from transformers import AutoTokenizer

from compress.export.prepare import CHECK_TEXTS

V = gguf.GGUFValueType
K = gguf.Keys.Tokenizer
Field = tuple[str, Any, V, "V | None"]  # key, value, value type, item type of an array


def tokenizer_fields(tokenizer, vocab_size: int, reference: str | Path | None = None) -> list[Field]:
    """The ``tokenizer.*`` metadata: ``reference``'s if its token list is ours, else built from ours."""
    if tokenizer is None:
        raise ValueError("tokenizer: a GGUF file carries its tokenizer; pass the model's tokenizer")
    tokens = token_list(tokenizer, vocab_size)
    copied = reference_fields(reference) if reference is not None else []
    if copied and _value(copied, K.LIST) == tokens:
        return copied
    return built_fields(tokenizer, tokens, pre=_value(copied, K.PRE))


def token_list(tokenizer, vocab_size: int) -> list[str]:
    """Tokens in id order, padded with llama.cpp's ``[PAD<id>]`` up to the model's ``vocab_size``."""
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"tokenizer: {len(tokenizer)} tokens but the model embeds {vocab_size}; pass the model's own "
            "tokenizer or resize the embeddings (model.resize_token_embeddings(len(tokenizer)))"
        )
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if None in tokens:
        raise ValueError(f"tokenizer: no token has id {tokens.index(None)}; GGUF needs ids 0..len-1")
    return tokens + [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]


def reference_fields(reference: str | Path) -> list[Field]:
    """Every ``tokenizer.*`` field of the GGUF file ``reference``, with its value types."""
    try:
        reader = gguf.GGUFReader(reference)
    except (OSError, ValueError) as error:
        raise ValueError(f"reference: {reference} is not a readable GGUF file ({error})") from error
    fields = []
    for key, item in reader.fields.items():
        if key.startswith("tokenizer."):
            item_type = item.types[-1] if item.types[0] == V.ARRAY else None
            fields.append((key, item.contents(), item.types[0], item_type))
    return fields


def _value(fields: Sequence[Field], key: str) -> Any:
    return next((value for name, value, _, _ in fields if name == key), None)


def built_fields(tokenizer, tokens: list[str], pre: str | None = None) -> list[Field]:
    """llama.cpp's metadata of a byte-level BPE tokenizer (``tokenizer.ggml.model = "gpt2"``).

    Added special tokens are CONTROL, other added tokens USER_DEFINED (matched whole), padding UNUSED.
    """
    backend = _backend_json(tokenizer)
    kinds = [gguf.TokenType.NORMAL] * len(tokenizer) + [gguf.TokenType.UNUSED] * (
        len(tokens) - len(tokenizer)
    )
    for token_id, token in tokenizer.added_tokens_decoder.items():
        kinds[token_id] = gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in backend["model"]["merges"]]
    fields: list[Field] = [
        (K.MODEL, "gpt2", V.STRING, None),
        (K.PRE, pre or _plain_gpt2_pre(backend["pre_tokenizer"]), V.STRING, None),
        (K.LIST, tokens, V.ARRAY, V.STRING),
        (K.TOKEN_TYPE, [int(kind) for kind in kinds], V.ARRAY, V.INT32),
        (K.MERGES, merges, V.ARRAY, V.STRING),
    ]
    roles = {K.BOS_ID: "bos", K.EOS_ID: "eos", K.UNK_ID: "unk", K.PAD_ID: "pad"}
    for key, role in roles.items():
        if (token_id := getattr(tokenizer, f"{role}_token_id")) is not None:
            fields.append((key, token_id, V.UINT32, None))
    add_bos, add_eos = _adds_special_tokens(tokenizer)
    fields += [(K.ADD_BOS, add_bos, V.BOOL, None), (K.ADD_EOS, add_eos, V.BOOL, None)]
    return fields + _chat_template_fields(tokenizer.chat_template)


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    described = json.loads(backend.to_str()) if backend is not None else {"model": {}, "pre_tokenizer": None}
    kind = described["model"].get("type")
    if kind != "BPE" or "ByteLevel" not in json.dumps(described["pre_tokenizer"]):
        raise ValueError(
            f"tokenizer: {type(tokenizer).__name__} ({kind or 'not a fast tokenizer'}) is not a byte-level "
            "BPE tokenizer, the only kind export_gguf describes (GPT-2, Llama 3, SmolLM2); with the original "
            "vocabulary, pass reference= (the original model's GGUF) to copy its tokenizer metadata"
        )
    return described


def _plain_gpt2_pre(pre_tokenizer: dict) -> str:
    plain = pre_tokenizer.get("type") == "ByteLevel" and not pre_tokenizer.get("add_prefix_space")
    if plain and pre_tokenizer.get("use_regex"):
        return "gpt-2"  # llama.cpp's name for GPT-2's regex split (not "gpt2", the tokenizer model)
    raise ValueError(
        f"tokenizer: its pre-tokenizer ({json.dumps(pre_tokenizer)[:120]}) is not GPT-2's plain byte-level "
        "split, and llama.cpp knows other splits by name (tokenizer.ggml.pre); pass reference= (the "
        "original model's GGUF) to take the name from it"
    )


def _adds_special_tokens(tokenizer) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS (llama.cpp's add_bos_token / add_eos_token)."""
    with_special, plain = tokenizer("a").input_ids, tokenizer("a", add_special_tokens=False).input_ids
    added = len(with_special) > len(plain)
    add_bos = added and with_special[0] == tokenizer.bos_token_id
    return add_bos, added and with_special[-1] == tokenizer.eos_token_id


def _chat_template_fields(template: str | Mapping[str, str] | None) -> list[Field]:
    named = {"default": template} if isinstance(template, str) else dict(template or {})
    return [
        (K.CHAT_TEMPLATE if name == "default" else K.CHAT_TEMPLATE_N.format(name=name), text, V.STRING, None)
        for name, text in named.items()
    ]


def verify_tokenizer(file: Path, tokenizer, shown: Path) -> None:
    """The tokenizer transformers builds from ``file`` encodes the check texts and a chat to the same ids.

    Raises:
        ValueError: some text encodes differently, or special tokens or the chat template differ.
    """
    reloaded = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    # No digits: transformers knows only some of llama.cpp's pre-tokenizer names and splits the others
    # GPT-2's way, while SmolLM2's "smollm" (in llama.cpp and in its tokenizer.json) splits every digit.
    texts = [*CHECK_TEXTS, "Héllo wörld, émojis 🙂\tand\nnew  lines"]
    if tokenizer.chat_template:
        chat = [{"role": "user", "content": CHECK_TEXTS[0]}]
        texts.append(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
    for text in texts:
        want, got = tokenizer(text).input_ids, reloaded(text).input_ids
        if want != got:
            raise ValueError(
                f"export check failed: the tokenizer transformers reads from {shown} encodes {text!r} as "
                f"{got[:12]}..., the original as {want[:12]}...; pass reference= (the original model's GGUF)"
            )
    want, got = _special(tokenizer), _special(reloaded)
    differ = [name for name, value in want.items() if value is not None and got[name] != value]
    if differ:
        raise ValueError(
            f"export check failed: {shown} does not carry the tokenizer's {' and '.join(differ)}; is "
            "reference= a GGUF file with our token list but other special tokens? Then pass no reference"
        )


def _special(tokenizer) -> dict[str, Any]:
    ids = {f"{role} token": getattr(tokenizer, f"{role}_token_id") for role in ("bos", "eos", "pad")}
    return {**ids, "chat template": tokenizer.chat_template}

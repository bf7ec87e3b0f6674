"""Causal-LM rows: plain text packed into blocks, or chat rows rendered with the chat template.

Labels are the inputs themselves, not shifted (the model shifts by one position); -100 marks tokens
that are not learned (a chat's prompt).

Example:
    >>> import datasets
    >>> from compress.data.blocks import pack_blocks
    >>> from compress.data.tokenizer import load_tokenizer
    >>> tokenizer = load_tokenizer("smollm2-135m", "data.tokenizer")
    >>> docs = datasets.Dataset.from_dict({"text": ["The cat sat on the mat.", "Dogs bark."]})
    >>> blocks = pack_blocks(docs, tokenizer, block_size=4, split="train")
    >>> [tokenizer.decode(block) for block in blocks["input_ids"]]
    ['The cat sat on', ' the mat.<|im_end|>', 'Dogs bark.<|im_end|>']
    >>> blocks[0]["input_ids"] == blocks[0]["labels"]
    True
"""

from __future__ import annotations

import datasets
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from compress.data.columns import UNLABELLED


def pack_blocks(
    docs: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int, split: str
) -> datasets.Dataset:
    """The ``text`` documents tokenised, each followed by eos, concatenated in order and cut into blocks
    of exactly ``block_size`` tokens (the remainder is dropped): ``input_ids``, ``attention_mask``,
    ``labels``."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("data.tokenizer: the tokenizer has no eos token to end documents; use one that has")

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]  # no truncation
        return {"input_ids": [row + [eos] for row in ids]}

    tokens = docs.map(encode, batched=True, remove_columns=docs.column_names, desc=f"tokenize {split}")
    flat = tokens.with_format("arrow")[:].column("input_ids").combine_chunks().flatten().to_numpy()
    count = len(flat) // block_size
    if count == 0:
        raise ValueError(
            f"data.block_size: the {split} split has {len(flat)} tokens, fewer than block_size={block_size}; "
            "lower data.block_size, or give the split more documents (data.test_size/val_size)"
        )
    blocks = flat[: count * block_size].astype(np.int64).reshape(count, block_size)
    return datasets.Dataset.from_dict(
        {"input_ids": blocks, "attention_mask": np.ones_like(blocks), "labels": blocks}
    )


def render_chats(
    chats: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    completion_only: bool,
    split: str,
) -> datasets.Dataset:
    """One row per ``messages`` conversation, rendered with the chat template and cut to ``block_size``
    tokens. With ``completion_only`` only the last (assistant) turn is learned: the prompt's labels are
    -100. Rows left without a learned token are dropped, with a warning."""
    if not tokenizer.chat_template:
        raise ValueError(
            "data.tokenizer: the tokenizer has no chat template, so chat rows (data.messages_column or "
            "data.prompt_column/response_column) cannot be rendered; use a chat model's tokenizer"
        )

    def encode(batch):
        rows = [encode_chat(m, tokenizer, block_size, completion_only) for m in batch["messages"]]
        return {key: [row[key] for row in rows] for key in ("input_ids", "attention_mask", "labels")}

    rows = chats.map(encode, batched=True, remove_columns=chats.column_names, desc=f"render {split} chats")
    kept = rows.filter(
        lambda b: [any(t != UNLABELLED for t in labels) for labels in b["labels"]], batched=True
    )
    if len(kept) == 0:
        raise ValueError(
            f"data.block_size: no {split} conversation keeps an answer token within block_size={block_size} "
            "tokens (the prompts fill the block); raise data.block_size"
        )
    if len(kept) < len(rows):
        rank_zero_warn(
            f"data.block_size: dropped {len(rows) - len(kept)} of {len(rows)} {split} conversations whose "
            f"answer starts after block_size={block_size} tokens; raise data.block_size to keep them"
        )
    return kept


def encode_chat(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, block_size: int, completion_only: bool
) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``labels`` of one conversation, at most ``block_size`` long."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if completion_only:
        prompt = _prompt_of(messages, text, tokenizer)
        prompt_ids = _ids(tokenizer, prompt)
        answer_ids = _ids(tokenizer, text[len(prompt) :])  # the prompt is what generation starts from
        ids, labels = prompt_ids + answer_ids, [UNLABELLED] * len(prompt_ids) + answer_ids
    else:
        ids = _ids(tokenizer, text)
        labels = list(ids)
    ids, labels = ids[:block_size], labels[:block_size]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def _prompt_of(messages: list[dict[str, str]], text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    if not messages or messages[-1]["role"] != "assistant":
        last = messages[-1]["role"] if messages else None
        raise ValueError(
            f"data.completion_only: a conversation ends with a {last!r} message; only an assistant's last "
            "turn can be learned alone. End each conversation with the assistant's answer, or set "
            "data.completion_only=false to learn every token"
        )
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    if not text.startswith(prompt):
        start = max(0, len(prompt) - 60)
        raise ValueError(
            "data.tokenizer: its chat template does not render the prompt (with the generation prompt) as "
            f"a prefix of the whole conversation ({prompt[start:]!r} vs {text[start : len(prompt)]!r}), so "
            "the answer's tokens cannot be told apart; set data.completion_only=false to learn every token"
        )
    return prompt


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]

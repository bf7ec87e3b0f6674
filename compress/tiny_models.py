"""A tiny random Llama causal LM with its own tiny tokenizer, built offline once into a cached folder.

Tests and smoke configs need a causal LM that loads like a real one (``from_pretrained`` on a folder, a
tokenizer with a chat template) but builds in under a second and runs in milliseconds. `tiny_llama_folder`
trains a byte-level BPE tokenizer (1,024 tokens, SmolLM2's special tokens and ChatML template) on 300 BBC
News articles, builds a 4-layer, 64-wide `LlamaForCausalLM` from seed 0, and saves both into
``<cache root>/tiny-llama-<key>``; the key changes with the recipe, the articles and the versions of the
libraries that build it. Its alias is ``tiny-llama`` (compress.assets finds the articles in the offline
corpus package and passes their folder in: this module does not import assets, which imports it).

Example:
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> from compress.assets import resolve_model_source
    >>> folder = resolve_model_source("tiny-llama")
    >>> model = AutoModelForCausalLM.from_pretrained(folder)
    >>> tokenizer = AutoTokenizer.from_pretrained(folder)
    >>> model.config.num_hidden_layers, model.config.vocab_size == len(tokenizer) == 1024
    (4, True)
    >>> print(tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
    ...                                     tokenize=False))
    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    <BLANKLINE>
    >>> model(**tokenizer("Shares rose", return_tensors="pt")).logits.shape[-1]
    1024
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from importlib.metadata import version
from pathlib import Path

from compress.gguf_cache import cache_root

RECIPE = "tiny-llama/1"  # bump whenever the recipe below changes: a new key, so a fresh build
DONE = "tiny_model.json"  # written last, inside the staging folder: a folder without it is incomplete
VOCAB_SIZE = 1024
ARTICLES_PER_TOPIC = 60  # x 5 BBC topics = 300 articles
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2, as in SmolLM2
ROLES = dict(
    unk_token="<|endoftext|>", bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
)
# SmolLM2-135M-Instruct's template, verbatim (tests compare it with the real tokenizer's, marked slow).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ARCHITECTURE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def cache_key(articles: list[str]) -> str:
    """16 hex digits of sha256 over the recipe, the training articles and the building libraries' versions.

    Versions are read from the installed metadata: a cache hit imports neither torch nor transformers.
    """
    digest = hashlib.sha256(RECIPE.encode())
    for name in ("transformers", "tokenizers", "torch"):
        digest.update(f"\0{name}=={version(name)}".encode())
    for article in articles:
        digest.update(b"\0" + article.encode())
    return digest.hexdigest()[:16]


def tiny_llama_folder(corpus: str | Path, root: Path | None = None) -> Path:
    """The cached tiny Llama folder under ``root`` (default: `cache_root`), built first if needed.

    The build goes into a staging sibling that is renamed into place, so neither a crash nor a concurrent
    builder leaves a half folder that looks done; a folder without the marker is replaced.

    Args:
        corpus: BBC News as compress.assets finds it: one folder of ``.txt`` articles per topic.
        root: the cache folder.
    """
    articles = bbc_articles(Path(corpus))
    folder = Path(root or cache_root()) / f"tiny-llama-{cache_key(articles)}"
    if (folder / DONE).is_file():
        return folder
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        build_tiny_llama(articles, staging)
        _move_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _move_into_place(staging: Path, folder: Path) -> None:
    """Renames ``staging`` to ``folder``; a folder already there without the marker is stale and replaced."""
    for _ in range(3):  # a stale folder is moved aside (atomically: never half deleted), then retried
        try:
            staging.rename(folder)
            return
        except OSError:
            if (folder / DONE).is_file():  # another builder finished first: its folder is as good as ours
                return
            if not folder.exists():
                raise
        aside = staging.with_name(f"{staging.name}.stale")
        with contextlib.suppress(FileNotFoundError):  # another builder moved it first
            folder.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"cannot move the tiny model built in {staging} into {folder}: it keeps being replaced")


def build_tiny_llama(articles: list[str], target: Path) -> None:
    """Writes the tokenizer trained on ``articles``, the model and its generation config, the marker last."""
    start = time.perf_counter()
    target.mkdir(parents=True)
    tokenizer = train_tokenizer(articles)
    tokenizer.save_pretrained(target)
    tiny_llama(tokenizer).save_pretrained(target)
    seconds = time.perf_counter() - start
    (target / DONE).write_text(json.dumps({"recipe": RECIPE, "seconds": round(seconds, 2)}) + "\n")


def bbc_articles(corpus: Path, per_topic: int = ARTICLES_PER_TOPIC) -> list[str]:
    """The first ``per_topic`` articles of each topic folder of ``corpus`` (both sorted by name).

    Read directly rather than through `compress.data.sources`, which would pull in Lightning.
    """
    topics = sorted(p for p in corpus.iterdir() if p.is_dir())
    if not topics:
        raise FileNotFoundError(f"{corpus} holds no topic folders; pass BBC News' data folder")
    files = [f for topic in topics for f in sorted(topic.glob("*.txt"))[:per_topic]]
    return [f.read_bytes().decode("utf-8", errors="ignore").strip() for f in files]


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer trained on ``texts``, wrapped as SmolLM2's is (special tokens, template).

    Like SmolLM2's, it adds no special token when encoding: the chat template writes them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        chat_template=CHAT_TEMPLATE,
        model_max_length=ARCHITECTURE["max_position_embeddings"],
        **ROLES,
    )


def tiny_llama(tokenizer):
    """A random `LlamaForCausalLM` of `ARCHITECTURE` for ``tokenizer``, drawn from seed 0.

    The caller's random state is left as it was.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlamaConfig(vocab_size=len(tokenizer), **ARCHITECTURE, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**ids)
    return model.eval()

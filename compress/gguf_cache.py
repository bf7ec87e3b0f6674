"""GGUF checkpoints (llama.cpp's format) converted once into a cached Hugging Face folder.

`transformers` reads a GGUF file (with the ``gguf`` package) by dequantising every tensor, which takes
tens of seconds, and a model loaded that way refuses ``save_pretrained`` until its quantizer marker is
dropped. `converted_gguf` does both once and keeps the result, safetensors in fp32 plus the tokenizer with
its chat template, in a folder named by a fingerprint of the file's bytes and the transformers version:
a changed file never reuses a stale conversion, and later loads take about a second.

Example:
    >>> from pathlib import Path
    >>> from compress.gguf_cache import cache_key
    >>> weights = Path("tiny.gguf")
    >>> _ = weights.write_bytes(b"GGUF example")
    >>> first = cache_key(weights)
    >>> _ = weights.write_bytes(b"GGUF changed")
    >>> cache_key(weights) != first, len(first)
    (True, 16)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path

DONE = "conversion.json"  # written last: a folder without it is incomplete


def cache_root() -> Path:
    """``$COMPRESS_CACHE``, else ``~/.cache/compress``."""
    return Path(os.environ.get("COMPRESS_CACHE") or Path.home() / ".cache" / "compress").expanduser()


def cache_key(gguf_file: Path) -> str:
    """16 hex digits of sha256 over the file's bytes and the transformers version (which converts)."""
    stat = gguf_file.stat()
    return _key(str(gguf_file.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _key(path: str, size: int, mtime_ns: int) -> str:  # size and mtime only select the memo entry
    import transformers

    digest = hashlib.sha256(transformers.__version__.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def converted_gguf(gguf_file: str | Path, root: Path | None = None) -> Path:
    """The Hugging Face folder converted from ``gguf_file`` (converting it first if needed)."""
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_file} does not exist")
    folder = (root or cache_root()) / f"{gguf_file.stem}-{cache_key(gguf_file)}"
    if (folder / DONE).is_file():
        return folder
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _convert(gguf_file, staging)
        staging.rename(folder)
    except OSError:
        if not (folder / DONE).is_file():  # not another process finishing the same conversion first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _convert(gguf_file: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    print(f"[compress] converting {gguf_file.name} once into {target.parent} (dequantised, fp32)...")
    source, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype="float32")
    model.hf_quantizer = None  # the GGUF marker: it blocks save_pretrained; the weights are plain fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    seconds = time.perf_counter() - start
    (target / DONE).write_text(f'{{"source": "{gguf_file.name}", "seconds": {seconds:.1f}}}\n')
    print(f"[compress] converted in {seconds:.0f} s")

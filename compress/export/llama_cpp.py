"""Greedy generation with llama.cpp itself (``llama-cpp-python``), for the language-model report.

`llama_cpp_available` says whether the optional ``llama-cpp-python`` package is installed (``make
llamacpp`` builds it from source: about 10 to 25 minutes on 2 cores). `LlamaCppModel` runs a GGUF file at
batch 1 with llama.cpp's own CPU kernels and greedy sampling (top-k 1), timing the first token (the
prefill) and the whole generation.

Example:
    >>> isinstance(llama_cpp_available(), bool)
    True
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path


def llama_cpp_available() -> bool:
    """Whether ``llama_cpp`` (llama-cpp-python) can be imported."""
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppModel:
    """A GGUF file loaded by llama.cpp.

    Args:
        path: the ``.gguf`` file.
        threads: CPU threads for prompt and generation.
        context: the context window to allocate (prompt plus new tokens must fit).
    """

    def __init__(self, path: str | Path, threads: int, context: int = 512) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False
        )

    def generate(self, ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        """Greedy continuation of ``ids``: the new tokens, seconds to the first one, seconds in all."""
        tokens: list[int] = []
        start = time.perf_counter()
        first = 0.0
        for token in self.llm.generate(ids, top_k=1, temp=0.0, reset=True):
            tokens.append(int(token))
            if len(tokens) == 1:
                first = time.perf_counter() - start
            if len(tokens) == new_tokens:
                break
        return tokens, first, time.perf_counter() - start

    def close(self) -> None:
        self.llm.close()

"""How much floating-point precision alone moves SparseGPT's result: our solve in float64 (the default)
against the same solve in float32 (llmcompressor 0.14's precision), on the peer bench's calibration draw.

``python -m bench.sparsegpt_precision [--pattern 2:4] [--float32]`` prints one JSON line: the one-shot
time and the held-out perplexity of SmolLM2-135M-Instruct pruned to 50% (or N:M) with 32 calibration
blocks of 256 tokens (seed 0), on the 12 validation batches of ``bench.oneshot_vs_llmcompressor``.
A diagnostic: ``--float32`` swaps in float32 Hessian sums and Cholesky factors for this process only.
"""

from __future__ import annotations

import argparse
import json

import torch

import compress.sparsity.llm.sparsegpt as sparsegpt
from bench.oneshot_vs_llmcompressor import calibration, ours
from compress.assets import resolve_model_source


def use_float32() -> None:
    """Hessian sums and the Cholesky factors in float32, as llmcompressor computes them."""

    def add(self, inputs: torch.Tensor) -> None:
        self.total = self.total.float()
        self.total += inputs.detach().float().T @ inputs.detach().float()
        self.tokens += inputs.shape[0]

    def inverse_factor(hessian: torch.Tensor, damp: float):
        h = hessian.float().clone()
        dead = h.diagonal() == 0
        h[dead, dead] = 1
        h.diagonal().add_(damp * h.diagonal().mean())
        upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
        return upper, dead

    sparsegpt.Hessian.add = add
    sparsegpt.inverse_factor = inverse_factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default=None, help="N:M, e.g. 2:4 (default: unstructured 50%%)")
    parser.add_argument("--float32", action="store_true")
    args = parser.parse_args()
    if args.float32:
        use_float32()
    ids, evaluation = calibration(seed=0, rows=32, tokens=256)
    result = ours(resolve_model_source("smollm2-135m"), ids, "sparsegpt", args.pattern, evaluation, 12)
    print(json.dumps({"pattern": args.pattern or "50%", "float32": args.float32, **result}))


if __name__ == "__main__":
    main()

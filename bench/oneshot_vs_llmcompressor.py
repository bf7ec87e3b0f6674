"""One-shot Wanda and SparseGPT: compress's `prune_oneshot` against llmcompressor 0.14 on SmolLM2-135M.

``python -m bench.oneshot_vs_llmcompressor [--seeds 0] [--rows 64] [--tokens 256]
[--patterns unstructured 2:4] [--methods wanda sparsegpt]``
(first ``bash bench/setup_llmcompressor.sh``: llmcompressor pins transformers <= 5.17, so it runs in its own
venv, ``.venv-llmc``, through ``bench/llmcompressor_oneshot.py``).

Both sides prune the same model (SmolLM2-135M-Instruct, the ``smollm2-135m`` alias, float32, CPU) with the
same calibration blocks (``--rows`` packed BBC News training blocks of ``--tokens`` tokens, drawn with the
seed; no padding), the same sparsity of every decoder Linear (never embeddings or ``lm_head``), the same
SparseGPT block (128) and dampening (0.01). Both prune layer by layer with the pruned layers' outputs fed
forward. Each pruned model's held-out perplexity is measured here, in this process, on the same BBC News
validation blocks, beside the dense model's and magnitude pruning's. Prints one JSON line per run, then
per method and pattern: perplexity ours / theirs (goal <= 1.0) and one-shot wall time ours / theirs. The
times come from two processes (theirs includes tracing the model into layer segments; ours includes
capturing the first layer's inputs), run one after the other: read them as indicative.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from compress.assets import resolve_model_source
from compress.data import LanguageModelingDataModule
from compress.sparsity import prune_oneshot
from compress.sparsity.llm.perplexity import perplexity

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "bench" / "llmcompressor_oneshot.py"


def calibration(seed: int, rows: int, tokens: int) -> tuple[torch.Tensor, list]:
    """``rows`` packed training blocks (seeded order) and the fixed validation batches."""
    data = LanguageModelingDataModule(
        "bbc_news", "smollm2-135m", block_size=tokens, test_size=50, val_size=50, batch_size=rows,
        eval_batch_size=8, seed=0,
    )  # fmt: skip
    data.setup("fit")
    train = data.train_dataloader().dataset
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:rows]
    ids = torch.stack([torch.as_tensor(train[int(i)]["input_ids"]) for i in order])
    return ids, list(data.val_dataloader())


def ours(folder: str, ids: torch.Tensor, method: str, pattern: str | None, evaluation, batches: int) -> dict:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    start = time.perf_counter()
    prune_oneshot(model, ids, method, pattern=pattern, num_sequences=len(ids), batch_size=8, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "perplexity": perplexity(model, evaluation, batches)}


def theirs(
    python: str, folder: str, ids_file: Path, method: str, pattern: str | None, evaluation, batches, tmp
):
    out = Path(tmp) / f"llmc-{method}-{pattern}"
    command = [python, str(PEER), "--model", folder, "--calibration", str(ids_file), "--method", method,
               "--output", str(out), "--threads", str(torch.get_num_threads())]  # fmt: skip
    if pattern:
        command += ["--pattern", pattern]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"llmcompressor failed ({done.returncode}):\n{done.stderr[-3000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return {"seconds": record["seconds"], "perplexity": perplexity(model, evaluation, batches),
            "llmcompressor": record["llmcompressor"]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--eval-batches", type=int, default=12)
    parser.add_argument("--patterns", nargs="+", default=["unstructured", "2:4"])
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--peer-python", default=str(ROOT / ".venv-llmc" / "bin" / "python"))
    args = parser.parse_args(argv)
    if not Path(args.peer_python).exists():
        sys.exit(f"{args.peer_python} is missing: run `bash bench/setup_llmcompressor.sh` first.")
    folder = str(resolve_model_source("smollm2-135m"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ids, evaluation = calibration(seed, args.rows, args.tokens)
            ids_file = Path(tmp) / f"calibration-{seed}.pt"
            torch.save(ids, ids_file)
            dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            print(
                json.dumps(
                    {"seed": seed, "dense_perplexity": perplexity(dense, evaluation, args.eval_batches)}
                )
            )
            for pattern in args.patterns:
                nm = None if pattern == "unstructured" else pattern
                magnitude = ours(folder, ids, "magnitude", nm, evaluation, args.eval_batches)
                print(
                    json.dumps({"seed": seed, "pattern": pattern, "method": "magnitude", "ours": magnitude})
                )
                for method in args.methods:  # the two sides alternate, method by method
                    row = {"seed": seed, "pattern": pattern, "method": method}
                    row["ours"] = ours(folder, ids, method, nm, evaluation, args.eval_batches)
                    row["theirs"] = theirs(args.peer_python, folder, ids_file, method, nm, evaluation,
                                           args.eval_batches, tmp)  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
    summary(results, args)


def summary(results: list[dict], args) -> None:
    print(f"\n{len(args.seeds)} calibration seeds x {args.rows} blocks of {args.tokens} tokens:")
    for pattern in args.patterns:
        for method in args.methods:
            rows = [r for r in results if r["pattern"] == pattern and r["method"] == method]
            ppl = [r["ours"]["perplexity"] / r["theirs"]["perplexity"] for r in rows]
            secs = [r["ours"]["seconds"] / r["theirs"]["seconds"] for r in rows]
            print(
                f"  {method} {pattern}: perplexity ours/theirs {statistics.median(ppl):.3f} "
                f"({min(ppl):.3f} .. {max(ppl):.3f}), goal <= 1.0: {verdict(ppl)}; "
                f"time ours/theirs {statistics.median(secs):.2f} "
                f"(ours {statistics.median(r['ours']['seconds'] for r in rows):.0f} s, "
                f"theirs {statistics.median(r['theirs']['seconds'] for r in rows):.0f} s)"
            )


def verdict(ratios: list[float]) -> str:
    """'met' when every seed meets the goal, 'not met' when none does, else 'not shown'."""
    if max(ratios) <= 1.0:
        return "met"
    return "not met" if min(ratios) > 1.0 else "not shown"


if __name__ == "__main__":
    main()

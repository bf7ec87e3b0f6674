"""Chunked against naive KD loss at LLM sizes: the loss's own peak memory and its step time.

``python bench/chunked_loss.py [--tokens 2048] [--vocab 49152] [--hidden 576] [--chunk 256] [--rounds 5]``

One step is the KD loss (KDLoss defaults: forward KL, T=2, alpha=0.5) and its backward to the student's
final hidden states and output embedding (SmolLM2-135M's sizes by default), from teacher logits given as
input. ``naive`` computes the whole ``tokens x vocab`` student logits (``hidden @ weight.T``) and
`KDLoss`; ``chunked`` is `compress.distill.chunked.chunked_kd_loss`. Each variant runs in a fresh
process, alternating round by round; a run reports its peak RSS (VmHWM, reset once its inputs exist: not
``ru_maxrss``, which a child of the big `make bench` process inherits, bench/memory.py) above the RSS it
had once its inputs existed (the loss's own working memory) and the median of 3 timed steps
after one warm-up step. Prints each round and the ratios chunked / naive (median, min, max over rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench/ importable
from bench.memory import reset_peak, status_kib  # noqa: E402
from bench.rounds import ROUNDS  # noqa: E402


def one_run(variant: str, tokens: int, vocab: int, hidden_size: int, chunk: int) -> dict:
    import torch

    from compress.distill import KDLoss
    from compress.distill.chunked import chunked_kd_loss

    torch.manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size) * 0.02).requires_grad_()
    teacher = torch.randn(tokens, vocab)
    labels = torch.randint(0, vocab, (tokens,))
    loss = KDLoss()
    base = status_kib("VmRSS")  # KiB; not ru_maxrss, which a child inherits (bench/memory.py)
    if not reset_peak():
        raise RuntimeError("chunked_loss: /proc/self/clear_refs is not writable; cannot measure the peak")

    def step():
        if variant == "naive":
            value = loss(hidden @ weight.T, teacher, labels)
        else:
            value = chunked_kd_loss(hidden, weight, teacher, labels, loss, chunk_size=chunk)["loss"]
        value.backward()
        hidden.grad = weight.grad = None

    step()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = status_kib("VmHWM")
    return {"variant": variant, "seconds": statistics.median(times), "peak_mb": (peak - base) / 1024}


GOALS = {"peak_mb": 0.3, "seconds": 1.1}  # chunked / naive, lower is better


def compare(tokens: int, vocab: int, hidden: int, chunk: int, rounds: int) -> dict[str, list[dict]]:
    """Each variant in a fresh process per round, alternating which goes first."""
    flags = [f"--tokens={tokens}", f"--vocab={vocab}", f"--hidden={hidden}", f"--chunk={chunk}"]
    runs: dict[str, list[dict]] = {"naive": [], "chunked": []}
    for round_number in range(rounds):
        order = ("naive", "chunked") if round_number % 2 == 0 else ("chunked", "naive")
        for variant in order:
            child = [sys.executable, __file__, "--one", variant, *flags]
            result = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
            runs[variant].append(result)
            seconds, peak = result["seconds"], result["peak_mb"]
            print(f"round {round_number + 1} {variant:8s} {seconds:.3f} s  {peak:.0f} MB", flush=True)
    return runs


def ratios(runs: dict[str, list[dict]], key: str) -> list[float]:
    return [c[key] / n[key] for c, n in zip(runs["chunked"], runs["naive"], strict=True)]


def verdict(values: list[float], goal: float) -> str:
    """ "met" when every round meets the goal, "not met" when none does, else "not shown (straddles)"."""
    if max(values) <= goal:
        return "met"
    return "not met" if min(values) > goal else "not shown (straddles)"


def measure(quick: bool = False):
    """`make bench`: peak memory and step time of the chunked loss against the naive one."""
    from bench.common import Entry

    tokens = 512 if quick else 2048
    runs = compare(tokens, 49152, 576, 256, 1 if quick else ROUNDS)
    names = {"peak_mb": "peak memory", "seconds": "step time"}
    entries = []
    for key, goal in GOALS.items():
        values = ratios(runs, key)
        said = verdict(values, goal)
        entries.append(
            Entry(
                name=f"chunked / naive KD loss at {tokens} x 49,152: {names[key]}",
                ratio=statistics.median(values),
                goal=goal,
                better="lower",
                numbers={
                    "round_ratios": [round(v, 4) for v in values],
                    **{v: [round(r[key], 4) for r in runs[v]] for v in ("naive", "chunked")},
                    "verdict": said,
                },
                note=f"median of {len(values)} alternating rounds, a process per run; {said}",
                rounds=values,
            )
        )
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process: one variant
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.tokens, args.vocab, args.hidden, args.chunk)))
        return
    runs = compare(args.tokens, args.vocab, args.hidden, args.chunk, args.rounds)
    for key, unit in (("peak_mb", "MB"), ("seconds", "s")):
        values = ratios(runs, key)
        naive = statistics.median(r[key] for r in runs["naive"])
        chunked = statistics.median(r[key] for r in runs["chunked"])
        print(
            f"{key}: chunked / naive = {statistics.median(values):.3f} (min {min(values):.3f}, max "
            f"{max(values):.3f}); medians {chunked:.3f} / {naive:.3f} {unit}; goal <= {GOALS[key]}: "
            f"{verdict(values, GOALS[key])}"
        )


if __name__ == "__main__":
    main()

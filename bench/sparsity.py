"""Pruning the fine-tuned MiniLM-L6 teacher: CPU latency and accuracy, unstructured vs structured sparsity.

Usage: python bench/sparsity.py [--model runs/default/stages/teacher/model] [--recovery-steps N] [--extras]
       [--threads T [T ...]] [--json out.json]

How each number is measured:

- Variants, each a fresh copy of the fine-tuned teacher (``make demo`` writes it): ``dense`` as saved, no
  further training; ``unstructured 50%``: global magnitude masks over the encoder's Linear weights
  (`compress.callbacks.MagnitudePruning`, all of it at step 0, masks re-applied after every step of the
  recovery);
  ``structured r`` for r = 30/50/70%: `prune_structured(head_ratio=r, ffn_ratio=r)` with its default
  magnitude importance (L2 norm of each head's / channel's weight group), uniform per layer, counts rounded
  down (of 12 heads: 3, 6, 8 go; of 1536 FFN channels: 460, 768, 1075). ``--extras`` adds two rows: dense
  with the same recovery (is a Δacc the pruning or the extra training?) and structured 50% with Taylor
  importance (|weight x gradient| on the first training batch).
- Recovery: `TaskModule` (AdamW, lr 5e-5, 10% warm-up, linear decay) for ``--recovery-steps`` optimizer steps
  at batch 32 on the teacher's 2,000 labelled training rows (default: one epoch, 63 steps), seed 0 each.
- Accuracy and macro-F1: ``Trainer.test`` on the 1,000-row test split of configs/pipelines/default.yaml,
  the split the teacher's 0.818 was measured on. Δacc is in points vs dense.
- Latency: eval mode, ``torch.inference_mode``, on the first 32 (and the first 1) test reviews padded to 64
  tokens. The machine may be shared, so only ratios measured side by side in this run mean something: the
  variants are interleaved call by call (the order flips every round) and each time is a median over all
  calls; the per-round ratios show the spread. Speed-up = dense median / variant median. Other jobs on the
  cores add waits of about the same length to every op, fast or slow, so a busy machine shrinks the
  speed-ups: the load average before and after each measurement is printed. ``--threads 2 1`` runs
  everything with 2 threads and times the same models again with 1 (extra rows).
- Parameters: total, non-embedding (outside ``*.embeddings.*``), and non-zero entries of the non-embedding
  ones (unstructured zeros stay in the dense tensors: they are stored and multiplied like any weight).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from compress.callbacks import MagnitudePruning  # noqa: E402
from compress.data import TextClassificationDataModule, split_rows  # noqa: E402
from compress.modules import TaskModule  # noqa: E402
from compress.sparsity.structured import prune_structured, structure_of  # noqa: E402

DEFAULT_MODEL = Path("runs/default/stages/teacher/model")
LENGTH = 64
BATCHES = ("batch_32x64", "batch_1x64")
DEFAULT_THREADS = torch.get_num_threads()
SPEEDUP_GOAL, ACC_DROP_GOAL = 2.0, 1.0  # at structured 50%: >= 2x faster, <= 1 point below dense
STRUCTURED = {"structured_30": 0.3, "structured_50": 0.5, "structured_70": 0.7}
LABELS = {
    "dense": "dense (teacher as saved)",
    "dense_recovered": "extra: dense + the same recovery (control)",
    "structured_50_taylor": "extra: structured 50%, Taylor importance",
    "unstructured_50": "unstructured 50% (encoder Linears)",
    **{name: f"structured {round(100 * r)}% (heads + FFN)" for name, r in STRUCTURED.items()},
}


def datamodule(model_dir: Path) -> TextClassificationDataModule:
    """The split of the default pipeline's teacher stage: 2,000 labelled rows, 500 val, 1,000 test."""
    return TextClassificationDataModule(
        source="rotten_tomatoes", tokenizer=str(model_dir), test_size=1000, val_size=500,
        max_train_examples=8000, transfer_fraction=0.75, include_transfer=False, max_length=LENGTH,
        batch_size=32, seed=0,
    )  # fmt: skip


def trainer(steps: int = -1) -> Trainer:
    return Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip


def recover(model, data, steps: int, callbacks=()) -> tuple[torch.nn.Module, float]:
    """The short recovery fine-tune; returns the model and the seconds it took."""
    seed_everything(0, verbose=False)
    module = TaskModule(model, learning_rate=5e-5, warmup_ratio=0.1)
    fit = trainer(steps)
    fit.callbacks.extend(callbacks)
    start = time.perf_counter()
    fit.fit(module, datamodule=data)
    return module.model, time.perf_counter() - start


def evaluate(model, data) -> dict[str, float]:
    (scores,) = trainer().test(TaskModule(model), datamodule=data, verbose=False)
    return {"acc": scores["test/acc"], "f1": scores["test/f1"]}


def structured(teacher, ratio: float, data, importance: str = "magnitude"):
    """A copy of ``teacher`` without ``ratio`` of its heads and FFN channels in every layer.

    Taylor importance scores with the loss gradient on the first training batch (32 rows), as
    `StructuredPruning(importance="taylor", at_step=0)` would."""
    model = copy.deepcopy(teacher)
    batch = next(iter(data.train_dataloader())) if importance == "taylor" else None
    prune_structured(model, head_ratio=ratio, ffn_ratio=ratio, importance=importance, batch=batch)
    return model


def build_variants(teacher, data, args) -> tuple[dict[str, torch.nn.Module], dict[str, dict]]:
    """All pruned (and recovered) variants, and what was done to each."""
    pruning = MagnitudePruning(target_sparsity=0.5, start_step=0, end_step=0, targets=[r"\.encoder\."])
    recipes = {"unstructured_50": (lambda: copy.deepcopy(teacher), [pruning])}
    recipes.update({name: (lambda r=r: structured(teacher, r, data), []) for name, r in STRUCTURED.items()})
    if args.extras:
        recipes["dense_recovered"] = (lambda: copy.deepcopy(teacher), [])
        recipes["structured_50_taylor"] = (lambda: structured(teacher, 0.5, data, "taylor"), [])
    models, seconds = {"dense": teacher}, {"dense": 0.0}
    for name, (build, callbacks) in recipes.items():
        models[name], seconds[name] = recover(build(), data, args.recovery_steps, callbacks)
        print(f"{name}: recovery {seconds[name]:.0f} s", flush=True)
    info = {}
    for name, model in models.items():
        shape = structure_of(model)
        info[name] = {"recovery_seconds": seconds[name], "heads": shape.heads, "ffn_channels": shape.channels}
    info["unstructured_50"]["mask_sparsity"] = pruning.sparsity
    return {name: m.eval() for name, m in models.items()}, info


def parameter_counts(model) -> dict[str, int]:
    body = [p for n, p in model.named_parameters() if ".embeddings." not in n]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "non_embedding": sum(p.numel() for p in body),
        "non_zero_non_embedding": sum(int(torch.count_nonzero(p)) for p in body),
    }


def latency_batches(data) -> dict[str, dict[str, torch.Tensor]]:
    """The first 32 test reviews (and the first one), padded or truncated to exactly 64 tokens."""
    texts = list(split_rows(data.raw, data.hparams)["test"]["text"][:32])
    inputs = dict(
        data.tokenizer(texts, padding="max_length", max_length=LENGTH, truncation=True, return_tensors="pt")
    )
    return dict(zip(BATCHES, (inputs, {k: v[:1] for k, v in inputs.items()}), strict=True))


def interleaved(fns: dict, rounds: int, calls: int) -> dict[str, list[list[float]]]:
    """Seconds per call: every round, ``calls`` calls of each fn in turn; the order flips every round."""
    times = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for name in fns:
            times[name].append([])
        for _ in range(calls):
            for name in order:
                start = time.perf_counter()
                fns[name]()
                times[name][-1].append(time.perf_counter() - start)
    return times


def summarize(times: dict[str, list[list[float]]], reference: str = "dense") -> dict[str, dict]:
    """Median ms of each variant, its speed-up over ``reference``, and the per-round speed-ups."""
    flat = {name: [t for rnd in rounds for t in rnd] for name, rounds in times.items()}
    ref = statistics.median(flat[reference])
    return {
        name: {
            "median_ms": 1000 * statistics.median(flat[name]),
            "speedup": ref / statistics.median(flat[name]),
            "round_speedups": [
                statistics.median(r) / statistics.median(mine)
                for mine, r in zip(rounds, times[reference], strict=True)
            ],
            "calls": len(flat[name]),
        }
        for name, rounds in times.items()
    }


def measure_latency(models, batches, args, threads: int) -> dict[str, dict]:
    """Both batch sizes at ``threads`` threads; the extras have the shapes of timed variants: not timed."""
    torch.set_num_threads(threads)
    timed = {name: m for name, m in models.items() if not LABELS[name].startswith("extra")}
    out = {"load_average_before": os.getloadavg()}
    with torch.inference_mode():
        for label, calls in zip(BATCHES, (args.calls32, args.calls1), strict=True):
            fns = {name: (lambda m=m, b=batches[label]: m(**b)) for name, m in timed.items()}
            for fn in [*fns.values()] * 2:  # warm-up
                fn()
            print(f"latency {label}, {threads} thread(s), {args.rounds} rounds x {calls} calls", flush=True)
            out[label] = summarize(interleaved(fns, args.rounds, calls))
    out["load_average_after"] = os.getloadavg()
    return out


def run(args) -> dict:
    started = time.perf_counter()
    teacher = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    data = datamodule(args.model)
    data.setup()
    if args.recovery_steps is None:
        args.recovery_steps = len(data.train_dataloader())
    print(f"{len(data.splits['train'])} training rows, recovery {args.recovery_steps} steps", flush=True)
    models, info = build_variants(teacher, data, args)
    for name, model in models.items():
        info[name].update(parameter_counts(model), **evaluate(model, data))
    batches = latency_batches(data)
    latency = {str(t): measure_latency(models, batches, args, t) for t in args.threads}
    speedup = latency[str(args.threads[0])]["batch_32x64"]["structured_50"]["speedup"]
    drop = 100 * (info["dense"]["acc"] - info["structured_50"]["acc"])
    return {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/sparsity.py " + " ".join(sys.argv[1:]),
        "machine": {
            "os_cpu_count": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "torch_default_threads": DEFAULT_THREADS,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "settings": {
            "model": str(args.model),
            "recovery": f"{args.recovery_steps} steps, batch 32, AdamW lr 5e-5, warm-up 10%, linear decay",
            "training_threads": args.threads[0],
            "latency_threads": args.threads,
            "rounds": args.rounds,
            "calls_per_round": {"batch_32x64": args.calls32, "batch_1x64": args.calls1},
        },
        "variants": info,
        "latency": latency,
        "goals": {
            "structured_50_speedup_b32": {"value": speedup, "goal": f">= {SPEEDUP_GOAL}"},
            "structured_50_acc_drop_points": {"value": drop, "goal": f"<= {ACC_DROP_GOAL}"},
            "met": speedup >= SPEEDUP_GOAL and drop <= ACC_DROP_GOAL,
        },
        "wall_seconds": time.perf_counter() - started,
    }


def _timing(latency: dict, name: str) -> str:
    if name not in latency["batch_32x64"]:
        return "| - | - | - | - "  # an extra with the shapes of a timed variant
    b32, b1 = latency["batch_32x64"][name], latency["batch_1x64"][name]
    return (
        f"| {b32['median_ms']:.1f} | {b1['median_ms']:.2f} | **{b32['speedup']:.2f}x** | "
        f"**{b1['speedup']:.2f}x** "
    )


def _load(latency: dict) -> str:
    return " -> ".join(", ".join(f"{x:.1f}" for x in latency[key]) for key in ("load_average_before",
                       "load_average_after"))  # fmt: skip


def table(result: dict) -> str:
    threads, mach, goals = result["settings"]["latency_threads"], result["machine"], result["goals"]
    dense_acc = result["variants"]["dense"]["acc"]
    lines = [
        "| variant | params | non-emb params | non-zero non-emb | b32 ms | b1 ms | speed-up b32 "
        "| speed-up b1 | acc | macro-F1 | Δacc (pts) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        lines.append(
            f"| {LABELS[name]} | {v['parameters'] / 1e6:.2f}M | {v['non_embedding'] / 1e6:.2f}M | "
            f"{v['non_zero_non_embedding'] / 1e6:.2f}M {_timing(result['latency'][str(threads[0])], name)}| "
            f"{v['acc']:.3f} | {v['f1']:.3f} | {100 * (v['acc'] - dense_acc):+.1f} |"
        )
    for t in threads[1:]:  # the same variants, timed again at another thread count
        for name in result["latency"][str(t)]["batch_32x64"]:
            timing = _timing(result["latency"][str(t)], name)
            lines.append(f"| extra: {LABELS[name]}, {t} thread(s) | | | {timing}| | | |")
    lines.append("")
    for t in threads:
        lat = result["latency"][str(t)]
        spread = [", ".join(f"{s:.2f}" for s in lat[b]["structured_50"]["round_speedups"]) for b in BATCHES]
        lines.append(
            f"{t} thread(s): structured 50% speed-up per round b32 {spread[0]}; b1 {spread[1]}; "
            f"load average (1, 5, 15 min) {_load(lat)}."
        )
    lines += [
        f"Goals at structured 50%: speed-up b32 {goals['structured_50_speedup_b32']['value']:.2f}x (goal >= "
        f"{SPEEDUP_GOAL}), accuracy drop {goals['structured_50_acc_drop_points']['value']:+.1f} points "
        f"(goal <= {ACC_DROP_GOAL}): {'met' if goals['met'] else 'NOT met'}.",
        f"Recovery: {result['settings']['recovery']}, {threads[0]} thread(s). Machine: os.cpu_count()="
        f"{mach['os_cpu_count']}, usable cores {mach['usable_cores']}, torch's default threads "
        f"{mach['torch_default_threads']}, torch {mach['torch']}, transformers {mach['transformers']}, "
        f"Python {mach['python']}; wall time {result['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="fine-tuned HF classifier folder")
    parser.add_argument("--recovery-steps", type=int, help="optimizer steps of recovery (default: 1 epoch)")
    parser.add_argument(
        "--extras", action="store_true", help="also: dense + recovery, Taylor structured 50%%"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument(
        "--calls32", type=int, default=4, help="timed batch-32 forwards per variant per round"
    )
    parser.add_argument("--calls1", type=int, default=30, help="timed batch-1 forwards per variant per round")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[DEFAULT_THREADS],
        help="torch threads (default: torch's choice); the first for everything, the others time again",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        sys.exit(
            f"{args.model}: no fine-tuned model there. Run `make demo` first (it writes the MiniLM-L6 "
            f"teacher to {DEFAULT_MODEL}), or pass --model PATH to a fine-tuned classifier folder."
        )
    torch.set_num_threads(args.threads[0])
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # per-Trainer banners and tips
    result = run(args)
    print()
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Adapters on the real 3-layer MiniLM student: LoRA vs full fine-tuning, and what adapters cost at inference.

Usage: python bench/adapters.py [--steps N] [--rounds R] [--json out.json]

1. Training step (forward + CE + backward + AdamW step + zero_grad) on one fixed batch of 32 Rotten Tomatoes
   reviews padded to 64 tokens: full fine-tuning vs LoRA (r=8, alpha=16 on query/key/value/dense), step time
   and memory.
2. Inference (eval mode, ``torch.inference_mode``) at batch 32x64 and 1x64: the plain student, LoRA merged
   into the weights, LoRA unmerged, Houlsby and Pfeiffer bottleneck adapters (reduction factor 16).
3. A markdown table of the results and the machine; ``--json`` writes the same numbers.

The machine may be shared, so only ratios measured side by side in this one run are meaningful: the variants
are interleaved call by call (A, B, A, B, ...; the order flips every round) and each time is a median.
On a machine whose cores are busy with other jobs, torch's default thread count oversubscribes them and
every op pays a wait for descheduled threads; ``--threads 1`` then gives cleaner ratios.
Memory is reported three ways, each labelled: exact tensor bytes of the training state (parameters,
gradients, AdamW state), bytes of the activations autograd saves for backward, and the process peak-RSS
increase over a few training steps, measured in a fresh subprocess per variant.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from compress.assets import resolve_model_source  # noqa: E402
from compress.data.sources import load_source  # noqa: E402
from compress.peft import StudentFromTeacher  # noqa: E402
from compress.peft.adapters import attach_adapter  # noqa: E402
from compress.peft.bottleneck import BottleneckConfig, bottleneck_adapters  # noqa: E402

BATCH, LENGTH = 32, 64
LAYERS = [0, 2, 4]
STEP_RATIO_GOAL = 0.67  # LoRA step time / full step time: about 1.5x faster (design doc)
MERGED_GOAL, MERGED_TOLERANCE = 1.0, 0.05  # merged LoRA costs what the plain student costs
TRAINING = ("full", "lora")
INFERENCE = ("plain", "lora_merged", "lora_unmerged", "houlsby", "pfeiffer")
LABELS = {
    "full": "full fine-tuning",
    "lora": "LoRA r=8",
    "plain": "(a) plain student",
    "lora_merged": "(b) LoRA merged",
    "lora_unmerged": "(c) LoRA unmerged",
    "houlsby": "(d) bottleneck Houlsby",
    "pfeiffer": "(e) bottleneck Pfeiffer",
}


def lora_config() -> LoraConfig:
    return LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"], task_type="SEQ_CLS"
    )


def load_teacher():
    transformers.logging.set_verbosity_error()  # the 2-label head of the base model is new: expected
    return AutoModelForSequenceClassification.from_pretrained(resolve_model_source("minilm-l6"), num_labels=2)


def student(teacher):
    return StudentFromTeacher(layers=LAYERS).build(teacher)


def fixed_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """32 real reviews (a fixed shuffle, both classes), tokenized to exactly 64 tokens."""
    rows = load_source("rotten_tomatoes").shuffle(seed=0).select(range(BATCH))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("minilm-l6"))
    inputs = tokenizer(
        list(rows["text"]), padding="max_length", max_length=LENGTH, truncation=True, return_tensors="pt"
    )
    return dict(inputs), torch.tensor(list(rows["label"]))


def training_model(name: str, teacher):
    torch.manual_seed(0)
    model = student(teacher)
    if name == "lora":
        model = attach_adapter(model, lora_config())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, optimizer


def train_step(model, optimizer, inputs, labels) -> None:
    loss = F.cross_entropy(model(**inputs).logits, labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def training_memory(model, optimizer, inputs, labels) -> dict[str, int]:
    """Exact bytes of the training state, and of the activations autograd keeps for backward (one step)."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameter_storages:  # weights saved for backward are counted once
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(**inputs).logits, labels)
    loss.backward()
    grads = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    optimizer.step()
    state = tensor_bytes(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    optimizer.zero_grad(set_to_none=True)
    params = list(model.parameters())
    param_bytes = tensor_bytes(params)
    return {
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "parameter_bytes": param_bytes,
        "gradient_bytes": grads,
        "optimizer_state_bytes": state,
        "training_state_bytes": param_bytes + grads + state,
        "saved_activation_bytes": sum(saved.values()),
    }


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def rss_probe(name: str) -> None:
    """Subprocess body: peak-RSS increase over 2 training steps of a freshly built model, as JSON.

    Step 1 allocates gradients and AdamW state; step 2 holds them while activations build up again.
    """
    inputs, labels = fixed_batch()
    teacher = load_teacher()
    model, optimizer = training_model(name, teacher)
    del teacher
    gc.collect()
    before = _rss_kib("VmRSS")
    try:  # Linux: reset the high-water mark so loading the model does not count
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    for _ in range(2):
        train_step(model, optimizer, inputs, labels)
    peak = _rss_kib("VmHWM")
    print(
        json.dumps(
            {
                "rss_before_bytes": before * 1024,
                "peak_rss_delta_bytes": (peak - before) * 1024,
                "hwm_reset": reset,
            }
        )
    )


def measure_rss(name: str) -> dict:
    if not Path("/proc/self/status").is_file():
        return {"peak_rss_delta_bytes": None, "note": "no /proc: peak RSS not measured"}
    out = subprocess.run(
        [sys.executable, __file__, "--rss-probe", name, "--threads", str(torch.get_num_threads())],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def interleaved(fns: dict, rounds: int, calls: int) -> dict[str, list[list[float]]]:
    """Seconds per call of each fn: in every round, ``calls`` calls each, alternating A, B, A, B, ...;
    the order of the variants flips every round."""
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        round_times = {name: [] for name in fns}
        for _ in range(calls):
            for name in order:
                start = time.perf_counter()
                fns[name]()
                round_times[name].append(time.perf_counter() - start)
        for name in fns:
            times[name].append(round_times[name])
    return times


def summarize(times: dict[str, list[list[float]]], reference: str) -> dict[str, dict]:
    """Median ms per variant, its ratio to ``reference``, and the per-round median ratios (spread)."""
    flat = {name: [t for rnd in rounds for t in rnd] for name, rounds in times.items()}
    ref = statistics.median(flat[reference])
    out = {}
    for name, rounds in times.items():
        per_round = [
            statistics.median(rnd) / statistics.median(ref_rnd)
            for rnd, ref_rnd in zip(rounds, times[reference], strict=True)
        ]
        out[name] = {
            "median_ms": 1000 * statistics.median(flat[name]),
            "ratio": statistics.median(flat[name]) / ref,
            "round_ratios": per_round,
            "calls": len(flat[name]),
        }
    return out


def inference_models(teacher) -> dict[str, torch.nn.Module]:
    """The five variants; adapters get non-zero weights so merging and adapters do real arithmetic."""
    torch.manual_seed(1)
    plain = student(teacher)
    lora = attach_adapter(student(teacher), lora_config())
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # fresh LoRA has B = 0; trained LoRA does not
    merged = copy.deepcopy(lora).merge_and_unload()
    models = {"plain": plain, "lora_merged": merged, "lora_unmerged": lora}
    for placement in ("houlsby", "pfeiffer"):
        model = attach_adapter(student(teacher), BottleneckConfig(reduction_factor=16, placement=placement))
        with torch.no_grad():
            for adapter in bottleneck_adapters(model).values():
                adapter.up.weight.normal_(0, 0.02)  # zero-initialised up-projection: make it do something
        models[placement] = model
    return {name: m.eval() for name, m in models.items()}


def check_inference_models(models, inputs) -> dict[str, object]:
    with torch.inference_mode():
        logits = {name: m(**inputs).logits for name, m in models.items()}
    return {
        "merged_type": type(models["lora_merged"]).__name__,
        "merged_vs_unmerged_max_abs_diff": float(
            (logits["lora_merged"] - logits["lora_unmerged"]).abs().max()
        ),
        "houlsby_adapters": len(bottleneck_adapters(models["houlsby"])),
        "pfeiffer_adapters": len(bottleneck_adapters(models["pfeiffer"])),
        "adapter_parameters": {
            name: sum(p.numel() for p in m.parameters())
            - sum(p.numel() for p in models["plain"].parameters())
            for name, m in models.items()
        },
    }


def run(args) -> dict:
    started = time.perf_counter()
    inputs, labels = fixed_batch()
    teacher = load_teacher()
    print(
        f"batch {tuple(inputs['input_ids'].shape)}, labels {labels.tolist().count(1)}x1 / "
        f"{labels.tolist().count(0)}x0",
        flush=True,
    )

    # 1. training
    trained = {name: training_model(name, teacher) for name in TRAINING}
    memory = {name: training_memory(*trained[name], inputs, labels) for name in TRAINING}
    for _ in range(args.warmup):
        for name in TRAINING:
            train_step(*trained[name], inputs, labels)
    steps = {
        name: (lambda m=model, o=opt: train_step(m, o, inputs, labels))
        for name, (model, opt) in trained.items()
    }
    print(f"training: {args.rounds} rounds x {args.steps} steps per variant, interleaved ...", flush=True)
    step_times = summarize(interleaved(steps, args.rounds, args.steps), "full")
    del trained, steps
    gc.collect()
    print("peak RSS probes (one subprocess per variant) ...", flush=True)
    for name in TRAINING:
        memory[name].update(measure_rss(name))

    # 2. inference
    models = inference_models(teacher)
    checks = check_inference_models(models, inputs)
    one = {k: v[:1] for k, v in inputs.items()}
    inference = {}
    for label, batch, calls in (("batch_32x64", inputs, args.calls32), ("batch_1x64", one, args.calls1)):
        fns = {name: (lambda m=m, b=batch: m(**b)) for name, m in models.items()}
        with torch.inference_mode():
            for fn in fns.values():  # warm-up
                for _ in range(2):
                    fn()
            print(
                f"inference {label}: {args.rounds} rounds x {calls} calls per variant, interleaved ...",
                flush=True,
            )
            inference[label] = summarize(interleaved(fns, args.rounds, calls), "plain")

    step_ratio = step_times["lora"]["ratio"]
    merged = {label: inference[label]["lora_merged"]["ratio"] for label in inference}
    full_state, lora_state = memory["full"]["training_state_bytes"], memory["lora"]["training_state_bytes"]
    return {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/adapters.py " + " ".join(sys.argv[1:]),
        "machine": {
            "os_cpu_count": os.cpu_count(),
            "torch_num_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "settings": {
            "model": "all-MiniLM-L6-v2 -> StudentFromTeacher(layers=[0, 2, 4])",
            "batch": [BATCH, LENGTH],
            "lora": "r=8, lora_alpha=16, target_modules=[query, key, value, dense], SEQ_CLS",
            "bottleneck": "reduction_factor=16 (24 units), relu",
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "warmup_steps": args.warmup,
            "inference_calls_per_round": {"batch_32x64": args.calls32, "batch_1x64": args.calls1},
        },
        "training": {
            "step_time": step_times,
            "step_time_ratio": {
                "value": step_ratio,
                "goal": f"<= {STEP_RATIO_GOAL}",
                "met": step_ratio <= STEP_RATIO_GOAL,
            },
            "memory": memory,
            "training_state_ratio": lora_state / full_state,
            "saved_activation_ratio": memory["lora"]["saved_activation_bytes"]
            / memory["full"]["saved_activation_bytes"],
            "peak_rss_delta_ratio": _ratio(
                memory["lora"].get("peak_rss_delta_bytes"), memory["full"].get("peak_rss_delta_bytes")
            ),
        },
        "inference": inference,
        "inference_goal": {
            "lora_merged_ratio": merged,
            "goal": f"~{MERGED_GOAL} (within +-{MERGED_TOLERANCE})",
            "met": all(abs(r - MERGED_GOAL) <= MERGED_TOLERANCE for r in merged.values()),
        },
        "checks": checks,
        "wall_seconds": time.perf_counter() - started,
    }


def _ratio(a, b):
    return a / b if a is not None and b else None


def _mb(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MB"


def _x(r) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def table(result: dict) -> str:
    t, m = result["training"], result["training"]["memory"]
    st = t["step_time"]
    full, lora = m["full"], m["lora"]
    spread = ", ".join(f"{r:.2f}" for r in st["lora"]["round_ratios"])
    lines = [
        "| training (batch 32x64) | full fine-tuning | LoRA r=8 | LoRA / full | goal |",
        "|---|---|---|---|---|",
        f"| step time, median (ms) | {st['full']['median_ms']:.0f} | {st['lora']['median_ms']:.0f} | "
        f"**{st['lora']['ratio']:.2f}** (rounds: {spread}) | <= {STEP_RATIO_GOAL} "
        f"({'met' if t['step_time_ratio']['met'] else 'not met'}) |",
        f"| trainable / total parameters | {full['trainable_parameters']:,} / {full['parameters']:,} | "
        f"{lora['trainable_parameters']:,} / {lora['parameters']:,} | "
        f"{lora['trainable_parameters'] / full['trainable_parameters']:.4f} (trainable) | |",
        f"| tensors: parameters | {_mb(full['parameter_bytes'])} | {_mb(lora['parameter_bytes'])} | "
        f"{lora['parameter_bytes'] / full['parameter_bytes']:.2f} | |",
        f"| tensors: gradients | {_mb(full['gradient_bytes'])} | {_mb(lora['gradient_bytes'])} | "
        f"{lora['gradient_bytes'] / full['gradient_bytes']:.3f} | |",
        f"| tensors: AdamW state | {_mb(full['optimizer_state_bytes'])} | "
        f"{_mb(lora['optimizer_state_bytes'])} | "
        f"{lora['optimizer_state_bytes'] / full['optimizer_state_bytes']:.3f} | |",
        f"| tensors: training state (params + grads + AdamW) | {_mb(full['training_state_bytes'])} | "
        f"{_mb(lora['training_state_bytes'])} | **{t['training_state_ratio']:.2f}** | |",
        f"| tensors: activations saved for backward | {_mb(full['saved_activation_bytes'])} | "
        f"{_mb(lora['saved_activation_bytes'])} | {t['saved_activation_ratio']:.2f} | |",
        f"| process: peak RSS increase over 2 steps (fresh subprocess) | "
        f"{_mb(full.get('peak_rss_delta_bytes'))} | {_mb(lora.get('peak_rss_delta_bytes'))} | "
        f"{_x(t['peak_rss_delta_ratio'])} | |",
        "",
        "| inference (eval, inference_mode) | batch 32x64: median ms | ratio to (a) | "
        "batch 1x64: median ms | ratio to (a) | goal |",
        "|---|---|---|---|---|---|",
    ]
    b32, b1 = result["inference"]["batch_32x64"], result["inference"]["batch_1x64"]
    for name in INFERENCE:
        goal = f"~{MERGED_GOAL}" if name == "lora_merged" else ""
        lines.append(
            f"| {LABELS[name]} | {b32[name]['median_ms']:.1f} | **{b32[name]['ratio']:.2f}** | "
            f"{b1[name]['median_ms']:.2f} | **{b1[name]['ratio']:.2f}** | {goal} |"
        )
    mach = result["machine"]
    lines += [
        "",
        f"Machine: os.cpu_count()={mach['os_cpu_count']}, "
        f"torch.get_num_threads()={mach['torch_num_threads']}, "
        f"torch {mach['torch']}, transformers {mach['transformers']}, Python {mach['python']}, "
        f"load average at the end {', '.join(f'{x:.1f}' for x in mach['load_average'] or [])}.",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (training and inference)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per variant")
    parser.add_argument(
        "--calls32", type=int, default=3, help="timed batch-32 forwards per variant per round"
    )
    parser.add_argument("--calls1", type=int, default=20, help="timed batch-1 forwards per variant per round")
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's own choice, usually the cores)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--rss-probe", choices=TRAINING, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_probe:
        rss_probe(args.rss_probe)
        return
    result = run(args)
    print()
    print(table(result))
    checks = result["checks"]
    print(
        f"\nchecks: merged model is a {checks['merged_type']}; merged vs unmerged logits max |diff| "
        f"{checks['merged_vs_unmerged_max_abs_diff']:.1e}; adapters: houlsby {checks['houlsby_adapters']}, "
        f"pfeiffer {checks['pfeiffer_adapters']}; wall time {result['wall_seconds']:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

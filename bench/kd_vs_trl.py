"""Our causal-LM KD step against TRL's `GKDTrainer`: step time and peak memory (goals ours/TRL <= 1, <= 0.8).

``python -m bench.kd_vs_trl [--rounds 5] [--steps 6] [--batch-size 4] [--block-size 128] [--chunk-size 256]``
(needs TRL: ``pip install -r bench/requirements.txt``).

Both sides distil SmolLM2-135M-Instruct (offline alias ``smollm2-135m``, 30 layers, vocabulary 49,152)
into a 10-layer student built from it (`StudentFromTeacher`, full fine-tuning, the same initial weights on
both sides) with the generalized JSD, β = 0.5, T = 1, no hard-label term, on the same bbc_news token blocks
(`LanguageModelingDataModule`, ``block_size`` tokens each, all real: every position predicts a next token).

- ours: `DistillationModule(loss=KDLoss(alpha=0, temperature=1, divergence="jsd", beta=0.5),
  logit_chunk_size=256)` in a Lightning `Trainer` (fused AdamW, weight decay 0.01 except biases and norms,
  linear decay from step 0, no gradient clipping), the data module's own shuffled order.
- TRL: `GKDTrainer(GKDConfig(lmbda=0, seq_kd=False, beta=0.5))`, the same optimizer, decay groups and
  schedule (``adamw_torch_fused``, transformers' default and ours), ``max_grad_norm=0`` (ours does not clip),
  ``bf16=False`` and ``gradient_checkpointing=False`` (TRL's configs default both to True: mixed precision
  and recomputation would change the maths and the cost), the rows in our order (``train_sampling_strategy=
  "sequential"``) through our collator.

Why the two compute the same loss (checked on random logits before the runs, and step by step in them):
TRL's ``generalized_jsd_loss`` is ``β·KL(P_t‖M) + (1−β)·KL(P_s‖M)`` with ``M = β·P_t + (1−β)·P_s``, its β
is our β; it sums over the unmasked shifted positions and divides by their count (``num_items_in_batch``),
our ``batchmean`` over the valid positions. ``GKDConfig.temperature`` is only the sampling temperature: the
loss is taken at T = 1 and without our T² factor, so they agree at T = 1 only. With ``lmbda=0`` TRL never
generates (``random.random() <= 0`` would need a draw of exactly 0.0) and ``seq_kd=False`` skips teacher
generation: both are off-policy.

Differences that stay (each side's own design; they decide the memory result): TRL materialises whole
``batch x block x vocabulary`` fp32 logits for the student and keeps every intermediate of the loss
(log-softmaxes, mixture, two KL maps) for backward; ours computes the student's logits from its final hidden
states in chunks of ``logit_chunk_size`` tokens (256 here: 2 chunks of the 4 x 127 positions; the module's
default, 1,024, would be one chunk at this batch) and takes their gradients at once. Both run the teacher
whole. Both free the gradients right after the optimizer step (our modules do it in ``optimizer_step``:
Lightning alone would zero them only in the next step, after its forward, keeping one fp32 copy of the
student, 255 MB, alive through it). TRL also takes a gradient norm every step (for logging, even without
clipping); Lightning logs the loss. Data: ``num_workers=0`` on both sides, no pinned memory.

Each variant runs in a fresh process (peak RSS is a process-lifetime maximum), ours and TRL alternating
first round by round. A run loads the models and the data, then trains ``steps`` steps; step time is the
median over steps 2..N (step 1 is warm-up) of one step's start to the next one's (the last one ends at its
end), data loading and logging included. Training peak = the high-water RSS since the models and data were
loaded (reset through ``/proc/self/clear_refs``) minus the RSS then; total peak = the process's own peak RSS
(VmHWM before the reset and after training; not ``ru_maxrss``, which a child inherits, bench/memory.py).
Step CPU time (the process's user + system time over the same steps, no goal) is printed too: on a shared
machine it moves less with other jobs than wall time does.
Ratios are ours / TRL per round; a goal is "met" when every round meets it, "not shown" when the rounds
straddle it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback
from transformers import TrainerCallback
from typing_extensions import override

from bench.common import Entry
from bench.memory import reset_peak, status_kib
from bench.rounds import ROUNDS

TEACHER, STUDENT_LAYERS = "smollm2-135m", 10
BETA, TEMPERATURE, LEARNING_RATE, WEIGHT_DECAY = 0.5, 1.0, 5e-5, 0.01
GOALS = {"step_seconds": 1.0, "train_peak_mb": 0.8}  # ours / TRL, lower is better
VARIANTS = ("ours", "trl")
MARK = "RESULT "  # the child's result line (libraries also print to stdout)
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKDTrainer lives in trl.experimental


def measure(quick: bool = False) -> list[Entry]:
    """`make bench`: the time and the memory entries."""
    settings = dict(rounds=1, steps=3) if quick else dict(rounds=ROUNDS, steps=6)
    runs = compare(**settings, batch_size=4, block_size=128, chunk_size=256, threads=2)
    return entries(runs, settings["steps"])


def compare(rounds: int, steps: int, **sizes) -> dict[str, list[dict]]:
    """Every run of both variants, alternating which goes first; ``sizes``: `one_run`'s other settings."""
    check_same_loss()
    flags = [f"--steps={steps}", *(f"--{key.replace('_', '-')}={value}" for key, value in sizes.items())]
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for round_number in range(rounds):
        for variant in VARIANTS if round_number % 2 == 0 else VARIANTS[::-1]:
            child = [sys.executable, "-m", "bench.kd_vs_trl", f"--one={variant}", *flags]
            done = subprocess.run(child, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                raise RuntimeError(f"{variant} run failed:\n{done.stderr[-3000:]}")
            result = json.loads(
                next(ln for ln in done.stdout.splitlines() if ln.startswith(MARK))[len(MARK) :]
            )
            runs[variant].append(result)
            print(
                f"round {round_number + 1} {variant:4s} step {result['step_seconds']:.3f} s "
                f"(cpu {result['step_cpu_seconds']:.3f} s)  training peak "
                f"{result['train_peak_mb']:.0f} MB  total peak {result['total_peak_mb']:.0f} MB  "
                f"first loss {result['losses'][0]:.6f}  ({result['threads']} threads)",
                flush=True,
            )
    return runs


def check_same_loss() -> None:
    """TRL's ``generalized_jsd_loss`` against our ``jsd`` on random logits, β on both sides the same."""
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError as error:
        raise RuntimeError("bench/kd_vs_trl.py needs TRL: pip install -r bench/requirements.txt") from error

    from compress.distill.divergences import soft_divergence

    generator = torch.Generator().manual_seed(0)
    student, teacher = (torch.randn(2, 7, 50, generator=generator) * 3 for _ in range(2))
    labels = torch.zeros(2, 7, dtype=torch.long)
    for beta in (0.1, 0.5, 0.9):
        theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=beta)
        ours = soft_divergence(student.reshape(14, 50), teacher.reshape(14, 50), 1.0, "jsd", beta)
        if not torch.allclose(theirs, ours, rtol=1e-5):
            raise AssertionError(f"beta {beta}: TRL's generalized JSD {theirs.item()} != ours {ours.item()}")


def one_run(
    variant: str, steps: int, batch_size: int, block_size: int, chunk_size: int, threads: int
) -> dict:
    """In a fresh process: load, reset the peak, train ``steps`` steps; times, memory, losses, batches."""
    torch.set_num_threads(threads)
    from compress.data import LanguageModelingDataModule
    from compress.modules.loading import load_teachers
    from compress.peft import StudentFromTeacher

    teacher = load_teachers(TEACHER)[0]
    student = StudentFromTeacher(num_hidden_layers=STUDENT_LAYERS).build(teacher)
    data = LanguageModelingDataModule(
        "bbc_news", tokenizer=TEACHER, block_size=block_size, batch_size=batch_size, max_train_documents=200
    )
    data.setup()
    order = list(data.train_dataloader().sampler)[: steps * batch_size]  # our training order, for TRL too
    gc.collect()
    load_peak, base = status_kib("VmHWM"), status_kib("VmRSS")  # this process's own, not ru_maxrss
    reset = reset_peak()
    record = Record()
    train = _train_ours if variant == "ours" else _train_trl
    train(teacher, student, data, order, steps, record, chunk_size)
    hwm = status_kib("VmHWM")  # without a reset: the peak since the start, an upper bound
    return {
        "variant": variant,
        "step_seconds": statistics.median(record.durations(skip=1)),
        "step_cpu_seconds": statistics.median(record.durations(skip=1, cpu=True)),
        "step_times": [round(t, 4) for t in record.durations()],
        "train_peak_mb": (hwm - base) / 1024,
        "total_peak_mb": max(load_peak, hwm) / 1024,
        "rss_after_load_mb": base / 1024,
        "peak_reset": reset,
        "losses": record.losses,
        "example_ids": record.example_ids,
        "threads": record.threads,
    }


class Record:
    """Step start times, the end of the last step, each step's loss and rows, and the threads in use."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0
        self.cpu_starts: list[float] = []
        self.cpu_end = 0.0
        self.losses: list[float] = []
        self.example_ids: list[list[int]] = []
        self.threads = 0

    def start(self) -> None:
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())
        self.threads = torch.get_num_threads()

    def stop(self) -> None:
        self.end = time.perf_counter()
        self.cpu_end = time.process_time()

    def step(self, loss: torch.Tensor, example_ids: torch.Tensor) -> None:
        self.losses.append(loss.item())
        self.example_ids.append(example_ids.tolist())

    def durations(self, skip: int = 0, cpu: bool = False) -> list[float]:
        """Each step from its start to the next one's (the last to its end), without the first ``skip``;
        wall time, or the process's CPU time."""
        starts, end = (self.cpu_starts, self.cpu_end) if cpu else (self.starts, self.end)
        return [b - a for a, b in zip(starts, [*starts[1:], end], strict=True)][skip:]


class LightningRecord(Callback):
    def __init__(self, record: Record) -> None:
        self.record = record

    @override
    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.record.start()

    @override
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.record.step(outputs["loss"], batch["example_id"])  # in the step, as on TRL's side
        self.record.stop()


class HuggingFaceRecord(TrainerCallback):
    """`Record`'s clock on a transformers `Trainer` (losses and rows come from `compute_loss`)."""

    def __init__(self, record: Record) -> None:
        self.record = record

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.record.start()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.record.stop()


def _train_ours(teacher, student, data, order, steps: int, record: Record, chunk_size: int) -> None:
    from lightning.pytorch import Trainer

    from compress.distill import KDLoss
    from compress.modules import DistillationModule

    loss = KDLoss(alpha=0.0, temperature=TEMPERATURE, divergence="jsd", beta=BETA)
    module = DistillationModule(
        teacher=teacher,
        student=student,
        loss=loss,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        logit_chunk_size=chunk_size,
    )
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[LightningRecord(record)],
    )
    trainer.fit(module, datamodule=data)


def _train_trl(teacher, student, data, order, steps: int, record: Record, chunk_size: int) -> None:
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from compress.data.causal_padding import CausalPadding

    class RecordingGKDTrainer(GKDTrainer):  # GKDTrainer's own loss, its value and rows noted
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            record.step(out[0] if return_outputs else out, inputs["example_id"])
            return out

    with tempfile.TemporaryDirectory() as output_dir:
        args = GKDConfig(
            output_dir=output_dir,
            lmbda=0.0,
            beta=BETA,
            temperature=TEMPERATURE,
            seq_kd=False,
            max_steps=steps,
            per_device_train_batch_size=data.hparams.batch_size,
            learning_rate=LEARNING_RATE,
            weight_decay=WEIGHT_DECAY,
            lr_scheduler_type="linear",
            warmup_steps=0,
            optim="adamw_torch_fused",
            max_grad_norm=0.0,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            report_to=[],
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            train_sampling_strategy="sequential",
            seed=0,
        )
        trainer = RecordingGKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data.splits["train"].select(order),
            data_collator=CausalPadding(data.tokenizer),
            processing_class=data.tokenizer,
            callbacks=[HuggingFaceRecord(record)],
        )
        trainer.train()


def summary(runs: dict[str, list[dict]]) -> list[dict]:
    """Per measure: the medians, the round ratios ours / TRL, the goal and the verdict."""
    rows = []
    for key in ("step_seconds", "step_cpu_seconds", "train_peak_mb", "total_peak_mb"):
        ratios = [o[key] / t[key] for o, t in zip(runs["ours"], runs["trl"], strict=True)]
        goal = GOALS.get(key)
        rows.append(
            {
                "measure": key,
                "ours": statistics.median(r[key] for r in runs["ours"]),
                "trl": statistics.median(r[key] for r in runs["trl"]),
                "ratios": ratios,
                "goal": goal,
                "verdict": None if goal is None else verdict(ratios, goal),
            }
        )
    return rows


def verdict(ratios: list[float], goal: float) -> str:
    if max(ratios) <= goal:
        return "met"
    if min(ratios) > goal:
        return "not met"
    return "not shown (straddles)"


def equivalence(runs: dict[str, list[dict]]) -> dict:
    """Whether every run saw the same batches, the first-step losses, the largest step-wise difference."""
    every = [r for v in VARIANTS for r in runs[v]]
    gaps = [
        abs(a - b)
        for o, t in zip(runs["ours"], runs["trl"], strict=True)
        for a, b in zip(o["losses"], t["losses"], strict=True)
    ]
    return {
        "same_batches": all(r["example_ids"] == every[0]["example_ids"] for r in every),
        "first_loss_ours": runs["ours"][0]["losses"][0],
        "first_loss_trl": runs["trl"][0]["losses"][0],
        "largest_loss_difference": max(gaps),
    }


def entries(runs: dict[str, list[dict]], steps: int) -> list[Entry]:
    same = equivalence(runs)
    rows = {row["measure"]: row for row in summary(runs)}
    result = []
    for row in (rows["step_seconds"], rows["train_peak_mb"]):
        unit = "s" if row["measure"] == "step_seconds" else "MB"
        numbers = {
            "ours": round(row["ours"], 4),
            "trl": round(row["trl"], 4),
            "unit": unit,
            "round_ratios": [round(r, 4) for r in row["ratios"]],
            "verdict": row["verdict"],
            **same,
        }
        if unit == "s":  # less sensitive to other jobs on the machine; no goal
            numbers["cpu_round_ratios"] = [round(r, 4) for r in rows["step_cpu_seconds"]["ratios"]]
        what = "median step time" if unit == "s" else "peak RSS above the RSS after loading"
        note = (
            f"{what}; {len(row['ratios'])} rounds of {steps} steps (the first: warm-up), a process per run; "
            f"verdict over rounds: {row['verdict']}"
        )
        name = f"KD step vs TRL GKDTrainer (lmbda=0, JSD beta 0.5): {what} ours / TRL"
        median = statistics.median(row["ratios"])
        result.append(Entry(name, median, row["goal"], "lower", numbers, note, rounds=row["ratios"]))
    return result


def print_table(runs: dict[str, list[dict]]) -> None:
    labels = {
        "step_seconds": "step time (s)",
        "step_cpu_seconds": "step CPU time (s)",
        "train_peak_mb": "training peak (MB)",
        "total_peak_mb": "total peak RSS (MB)",
    }
    print(f"\n{'measure':22s} {'ours':>9s} {'TRL':>9s}  ours/TRL median [min, max]  goal   verdict")
    for row in summary(runs):
        r = row["ratios"]
        goal = f"<= {row['goal']}" if row["goal"] else "-"
        print(
            f"{labels[row['measure']]:22s} {row['ours']:9.3f} {row['trl']:9.3f}  "
            f"{statistics.median(r):.3f} [{min(r):.3f}, {max(r):.3f}]      {goal:6s} {row['verdict'] or '-'}"
        )
    same = equivalence(runs)
    print(
        f"same batches in every run: {same['same_batches']}; first-step loss ours "
        f"{same['first_loss_ours']:.6f}, TRL {same['first_loss_trl']:.6f}; largest step-wise loss difference "
        f"{same['largest_loss_difference']:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--steps", type=int, default=6, help="training steps per run; the first is warm-up")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=256, help="our logit_chunk_size (tokens)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    parser.add_argument("--one", choices=VARIANTS, default=None, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps: at least 2 (the first step is warm-up, left out of the timing)")
    sizes = {
        key: getattr(args, key) for key in ("steps", "batch_size", "block_size", "chunk_size", "threads")
    }
    if args.one:
        print(MARK + json.dumps(one_run(args.one, **sizes)))
        return
    runs = compare(args.rounds, **sizes)
    print_table(runs)
    for entry in entries(runs, args.steps):
        print(json.dumps(entry.as_dict()))


if __name__ == "__main__":
    main()

"""The same work as the anchors: our MagnitudePruning vs Lightning's ModelPruning; structured vs unstructured.

1. Pruning 50% of the student's encoder Linear weights (global L1 magnitude, once at the start) while
   fine-tuning it (`TaskModule`, batch 32): training step time with `compress.callbacks.MagnitudePruning` vs
   `lightning.pytorch.callbacks.ModelPruning` (``l1_unstructured``, global, applied in epoch 0 only,
   made permanent at the end), alternating rounds. Then resume: each run checkpoints after epoch 1 and
   a second `Trainer` resumes it for one more epoch; sparsity of those weights at the end.
2. Inference latency (eval, ``torch.inference_mode``, 32 test reviews padded to 64 tokens) of the
   student: dense, 50% unstructured (magnitude masks, zeros kept in dense tensors) and 50% structured
   (`prune_structured`: half the heads and half the FFN channels of every layer). Calls alternate
   between the variants; medians.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint, ModelPruning

from bench.common import Entry, StepTimes, copies, datamodule, median, teacher_and_student, trainer
from bench.rounds import ROUNDS
from compress.callbacks import MagnitudePruning
from compress.modules import TaskModule
from compress.sparsity.magnitude import magnitude_masks
from compress.sparsity.structured import prune_structured
from compress.sparsity.targets import select_targets

AMOUNT = 0.5
CALLS_PER_ROUND = 8  # latency: calls per round; the rounds' ratios give the spread


ENCODER = [r"\.encoder\."]


def encoder_linears(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """The encoder's Linear layers, by the rule MagnitudePruning applies (`select_targets`)."""
    return [(m, "weight") for m in select_targets(model, targets=ENCODER).values()]


def sparsity(model: torch.nn.Module) -> float:
    weights = [m.weight for m, _ in encoder_linears(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def pruner(kind: str, module: TaskModule):
    if kind == "ours":
        return MagnitudePruning(target_sparsity=AMOUNT, start_step=0, end_step=0, targets=ENCODER)
    return ModelPruning(
        "l1_unstructured",
        parameters_to_prune=encoder_linears(module.model),
        amount=AMOUNT,
        use_global_unstructured=True,
        apply_pruning=lambda epoch: epoch == 0,
        make_pruning_permanent=True,
        verbose=0,
    )


def prune_and_train(kind: str, student, data, root: Path, epochs: int, resume: bool = False):
    """(step times, sparsity at the end) of fine-tuning with ``kind`` pruning for ``epochs`` epochs."""
    seed_everything(0, verbose=False)
    (s,) = copies(student)
    module = TaskModule(s, learning_rate=5e-5)
    timer = StepTimes()
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
    run = trainer(
        epochs=epochs, callbacks=[pruner(kind, module), timer, checkpoint], enable_checkpointing=True
    )
    run.fit(module, datamodule=data, ckpt_path=str(root / "last.ckpt") if resume else None)
    return timer, sparsity(module.model)


def pruning_entries(student, quick: bool) -> list[Entry]:
    rows, rounds = (320, 1) if quick else (640, ROUNDS)
    data = datamodule(rows)
    times = {"ours": [], "lightning": []}
    kept = {}
    for r in range(rounds):
        for kind in ("ours", "lightning") if r % 2 == 0 else ("lightning", "ours"):
            with tempfile.TemporaryDirectory() as root:
                timer, after_one = prune_and_train(kind, student, data, Path(root), epochs=1)
                times[kind].append(sum(timer.durations(skip=2)))
                if r == 0:
                    _, after_resume = prune_and_train(kind, student, data, Path(root), epochs=2, resume=True)
                    kept[kind] = {
                        "after_epoch_1": round(after_one, 4),
                        "after_resumed_epoch_2": round(after_resume, 4),
                    }
    ratios = [o / m for o, m in zip(times["ours"], times["lightning"], strict=True)]
    return [
        Entry(
            "pruning step time: MagnitudePruning / Lightning ModelPruning (50% global L1, one epoch)",
            median(ratios),
            1.0,
            "lower",
            {
                "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
                "steps_timed": len(timer.durations(skip=2)),
            },
            f"{rows} rows, batch 32; {rounds} rounds; the two prune differently (masks kept vs "
            "torch.nn.utils.prune's reparametrisation), so either may be faster",
            rounds=ratios,
        ),
        Entry(
            "sparsity kept through checkpoint + resume: MagnitudePruning / target 50%",
            kept["ours"]["after_resumed_epoch_2"] / AMOUNT,
            1.0,
            "higher",
            {"sparsity": kept, "target": AMOUNT},
            "ModelPruning's value is in numbers: its checkpoint holds the pruned weights but not the masks",
        ),
    ]


def latency_entries(student, quick: bool) -> list[Entry]:
    data = datamodule(320)
    texts = [data.raw[i]["text"] for i in range(32)]
    batch = dict(
        data.tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    )
    dense = copy.deepcopy(student).eval()
    unstructured = copy.deepcopy(student).eval()
    weights = {n: m.weight for n, m in select_targets(unstructured, targets=ENCODER).items()}
    with torch.no_grad():
        for name, mask in magnitude_masks(weights, AMOUNT, "global").items():
            weights[name].mul_(mask)
    structured = copy.deepcopy(student).eval()
    prune_structured(structured, head_ratio=AMOUNT, ffn_ratio=AMOUNT)
    models = {"dense": dense, "unstructured": unstructured, "structured": structured}
    calls = 10 if quick else 40
    times = {k: [] for k in models}
    with torch.inference_mode():
        for model in models.values():
            model(**batch)
        for c in range(calls):
            for name in models if c % 2 == 0 else list(models)[::-1]:
                start = time.perf_counter()
                models[name](**batch)
                times[name].append(time.perf_counter() - start)
    ms = {k: round(1000 * median(v), 2) for k, v in times.items()}
    per_round = CALLS_PER_ROUND
    ratios = [
        median(times["unstructured"][i : i + per_round]) / median(times["structured"][i : i + per_round])
        for i in range(0, calls, per_round)
    ]
    return [
        Entry(
            "latency speed-up at 50% sparsity: structured / unstructured (batch 32 x 64)",
            median(ratios),
            2.0,
            "higher",
            {
                "median_ms": ms,
                "unstructured_vs_dense": round(ms["dense"] / ms["unstructured"], 3),
                "calls": calls,
            },
            "unstructured zeros are multiplied like any weight; structured removes whole heads and "
            f"channels; rounds of {per_round} alternated calls",
            rounds=ratios,
        )
    ]


def measure(quick: bool = False) -> list[Entry]:
    _, student = teacher_and_student()
    return pruning_entries(student, quick) + latency_entries(student, quick)

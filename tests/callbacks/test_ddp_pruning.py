"""KD + LoRA + L1Sparsity + MagnitudePruning under DDP (2 CPU processes, gloo) against one process.

`ddp_pruning_run` runs both on the same data and model with the same global batch and the same rows per
step (its docstring explains why the maths is then the same). Measured on the test setting: the two DDP
ranks end bit-identical; DDP vs one process differ by <= 1.5e-7 in any weight and <= 1.2e-7 in any loss
(float32 reduction order: sums over 4+4 rows and a gradient all-reduce instead of one sum over 8 rows),
and no mask differs. The run has 30% transfer rows (label -100), so the ranks' labelled counts differ:
before DistillationModule weighted each rank's hard term by its share of the labelled rows, that alone
made weights differ by 7.8e-3 and losses by 4e-4 to 6e-4. Dropout 0.1 (rank-local masks): weights 6e-2,
val/loss 4.3e-5, train/loss 3.9e-3. The tolerances sit in between: 80x (losses) to 700x (weights) above
the float noise, 4x to 80x below the smallest divergence.
"""

import os
import subprocess
import sys

import pytest
import torch

WEIGHT_ATOL = 1e-4  # measured 1.4e-7; unweighted hard terms gave 7.8e-3, dropout 6e-2
LOSS_ATOL = 1e-5  # measured 1.2e-7 (~1 ulp at 1.1); 1e-4 would pass dropout's 4.3e-5 on val/loss
RATE_ATOL = 1e-6  # accuracy / F1: synced counts over identical predictions, so equal up to float32 rounding


def _masks_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for name, mask in a.items():
        assert torch.equal(mask.cpu(), b[name].cpu()), name


def _pruned(masks: dict) -> float:
    return sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


@pytest.fixture(scope="module")
def runs(tiny_teacher_dir, tiny_csv, tokenizer_dir, tmp_path_factory):
    """Both scripts, each with 2 DDP processes and in one process, all four at once: most of each run is
    start-up (imports, gloo rendezvous). Returns their output folder."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = {
        f"{script}-{devices}": [
            sys.executable, "-m", f"tests.callbacks.{script}", tiny_teacher_dir, tiny_csv, tokenizer_dir,
            str(out), "--devices", str(devices), *extra,
        ]
        for script, extra in [("ddp_pruning_run", ["--transfer-fraction", "0.3"]),
                              ("ddp_distillation_run", [])]
        for devices in (2, 1)
    }  # fmt: skip
    procs = {}
    for name, command in commands.items():
        log = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed below)
        procs[name] = (subprocess.Popen(command, env=env, stdout=log, stderr=log), log)
    try:
        for proc, _ in procs.values():
            proc.wait(timeout=300)
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
            log.close()
    for name, (proc, _) in procs.items():
        assert proc.returncode == 0, (out / f"{name}.log").read_text()[-3000:]
    return out


def test_ddp_on_two_cpu_processes_matches_one_process(runs):
    tmp_path = runs
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    assert ranks[0]["steps"] == ranks[1]["steps"] == single["steps"] == 8
    assert single["train_rows"] == 40  # 5 global batches of 8: no padded or duplicated rows under DDP

    # The same rows at every step: rank r reads slice r of each global batch of the single process's order.
    halves = [r["order"] for r in ranks]
    together = [row for k in range(0, 20, 4) for half in halves for row in half[k : k + 4]]
    assert together == single["order"] and sorted(single["order"]) == list(range(40))

    # DDP ranks agree exactly: masks (broadcast from rank 0) and weights (same averaged gradients).
    for key in ("masks", "lora_masks"):
        _masks_equal(ranks[0][key], ranks[1][key])
    for name, weight in ranks[0]["student"].items():
        assert torch.equal(weight, ranks[1]["student"][name]), name
    assert abs(_pruned(ranks[0]["masks"]) - 0.6) < 1e-3
    assert abs(_pruned(ranks[0]["lora_masks"]) - 0.5) < 1e-3

    # DDP vs one process. Masks exactly: the base masks come from frozen weights, and the LoRA-A masks are
    # recomputed on trained weights that differ by ~1e-7, far below the gaps between neighbouring |w| at the
    # thresholds (measured: 0 of 17408 + 512 entries differ), so no tie can fall differently.
    for key in ("masks", "lora_masks"):
        _masks_equal(ranks[0][key], single[key])
    for name, weight in single["student"].items():
        diff = (ranks[0]["student"][name] - weight).abs().max().item()
        assert diff < WEIGHT_ATOL, (name, diff)

    # Metrics: val/acc, val/f1 (torchmetrics) and val/loss (sync_dist) are synced; the last step's train/*
    # are per rank: their mean over the ranks (equal row counts, hard term weighted) is the global one.
    metrics = [r["metrics"] for r in ranks]
    for key, atol in [("val/acc", RATE_ATOL), ("val/f1", RATE_ATOL)]:
        assert abs(metrics[0][key] - metrics[1][key]) < atol, key
        assert abs(metrics[0][key] - single["metrics"][key]) < atol, key
    for key in ("val/loss", "train/loss", "train/hard", "train/soft"):
        ddp = (metrics[0][key] + metrics[1][key]) / 2
        assert abs(ddp - single["metrics"][key]) < LOSS_ATOL, (key, ddp, single["metrics"][key])


def test_distillation_callback_around_a_user_module_under_ddp(runs, tiny_teacher_dir):
    """The teacher is held by the callback on each rank (not DDP-wrapped): the ranks end bit-identical, as
    one process up to float noise, the teacher untouched and absent from the checkpoint."""
    from transformers import AutoModelForSequenceClassification

    ranks = [torch.load(runs / f"user_rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = torch.load(runs / "user_single.pt", weights_only=True)
    _masks_equal(ranks[0]["masks"], ranks[1]["masks"])
    _masks_equal(ranks[0]["masks"], single["masks"])
    for name, weight in ranks[0]["student"].items():
        assert torch.equal(weight, ranks[1]["student"][name]), name
        assert (weight - single["student"][name]).abs().max().item() < WEIGHT_ATOL, name
    original = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).state_dict()
    for rank in ranks:
        assert all(torch.equal(v, rank["teacher"][k]) for k, v in original.items())
    checkpoint = torch.load(runs / "user_rank0.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all(k.startswith("net.") for k in checkpoint["state_dict"])

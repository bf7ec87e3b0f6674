"""KD against CE-only training of a causal-LM student, at equal steps and tokens, over several seeds.

``python -m bench.lm_kd_vs_ce [--seeds 0 1 2] [--steps 40] [--block-size 64] [--batch-size 4]
[--variants untrained kd ce]``

The teacher is SmolLM2-135M-Instruct (offline alias ``smollm2-135m``); the student keeps 10 of its 30
layers (the first and last five, as configs/examples/distill_smollm2.yaml) and trains fully on packed BBC
News blocks. ``kd`` is the example config's loss (generalized JSD, beta 0.5, T = 1, no hard term),
``kd_forward`` the forward KL at T = 1 (no hard term); ``ce``
is next-token cross-entropy only (``KDLoss(alpha=1.0)``: the same module, data, steps, tokens and learning
rate; the teacher still runs, but only for evaluation). Per seed (the data split and training order, and
the student's dropout) both variants start from the same student; after training each is validated on
the same held-out blocks: perplexity, KL(teacher ‖ student) per token and top-1 agreement, beside the
teacher's perplexity and the untrained student's. Prints one JSON line per run and the KD − CE gaps
(min / median / max over seeds). A quality measure: timings are not compared.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from lightning.pytorch import Trainer, seed_everything

from compress.data import LanguageModelingDataModule
from compress.distill import KDLoss
from compress.modules import DistillationModule
from compress.modules.loading import load_teachers
from compress.peft import StudentFromTeacher

LAYERS = [0, 1, 2, 3, 4, 25, 26, 27, 28, 29]
LOSSES = {
    "kd": KDLoss(alpha=0.0, temperature=1.0, divergence="jsd", beta=0.5),
    "kd_forward": KDLoss(alpha=0.0, temperature=1.0, divergence="forward_kl"),
    "ce": KDLoss(alpha=1.0),
}
VARIANTS = ("untrained", *LOSSES)
KEYS = ("val/perplexity", "val/kl", "val/top1_agreement", "val/teacher_perplexity")


def run(teacher, variant: str, seed: int, args) -> dict:
    seed_everything(seed)
    data = LanguageModelingDataModule(
        "bbc_news", "smollm2-135m", block_size=args.block_size, test_size=50, val_size=50,
        batch_size=args.batch_size, eval_batch_size=8, seed=seed,
    )  # fmt: skip
    loss = LOSSES.get(variant, LOSSES["ce"])  # the untrained student is only validated
    module = DistillationModule(teacher, StudentFromTeacher(layers=LAYERS), loss, learning_rate=args.lr)
    trainer = Trainer(
        max_steps=args.steps, limit_val_batches=args.eval_batches, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        check_val_every_n_epoch=None, val_check_interval=10**9,
    )  # fmt: skip
    if variant != "untrained":
        trainer.fit(module, datamodule=data)
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    return {"variant": variant, "seed": seed, "steps": trainer.global_step, **{k: metrics[k] for k in KEYS}}


def spread(values: list[float], sign: str = "+") -> str:
    """Median (min .. max)."""
    return f"{statistics.median(values):{sign}.3f} ({min(values):{sign}.3f} .. {max(values):{sign}.3f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-batches", type=int, default=10)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["untrained", "kd", "ce"])
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    teacher = load_teachers("smollm2-135m")[0]
    results = []
    for seed in args.seeds:
        for variant in args.variants:
            results.append(run(teacher, variant, seed, args))
            print(json.dumps(results[-1]), flush=True)
    by = {(r["variant"], r["seed"]): r for r in results}
    print(f"\n{len(args.seeds)} seeds, {args.steps} steps of {args.batch_size} x {args.block_size} tokens:")
    for kd in [v for v in args.variants if v.startswith("kd")] if "ce" in args.variants else []:
        for key in KEYS[:3]:
            gaps = [by[kd, s][key] - by["ce", s][key] for s in args.seeds]
            print(f"  {key}: {kd} - ce {spread(gaps)}")
    for variant in args.variants:
        ppl = [by[variant, s]["val/perplexity"] for s in args.seeds]
        kl = [by[variant, s]["val/kl"] for s in args.seeds]
        print(f"  {variant}: perplexity {spread(ppl, '')}, KL {spread(kl, '')}")
    teacher_ppl = [by[args.variants[0], s]["val/teacher_perplexity"] for s in args.seeds]
    print(f"  teacher perplexity {spread(teacher_ppl, '')}")


if __name__ == "__main__":
    main()

"""Recovery of a pruned LLM by distillation against CE-only training, at equal steps and tokens, over seeds.

``python -m bench.llm_recovery [--prunings depth width] [--seeds 0 1 2] [--steps 60] [--block-size 128]
[--batch-size 4] [--losses kd ce]``

The teacher is SmolLM2-135M-Instruct (offline alias ``smollm2-135m``). It is pruned once per pruning with
`prune_llm` on 64 calibration blocks of BBC News training text: ``depth`` removes 10 of its 30 blocks
(one third, by Block Influence); ``width`` removes 50% of the FFN channels and one of its three key/value
groups (three of nine query heads) in every layer. The pruned model is the student; the unpruned model
is the teacher. ``kd`` trains on the forward KL to the teacher at T = 1 with no hard term; ``ce`` on
next-token cross-entropy only (``KDLoss(alpha=1.0)``: the same module, data, steps, tokens and learning
rate). Per seed (data split and order) both losses start from the same pruned student. Each run is then
validated on the same held-out blocks: perplexity, KL(teacher ‖ student) per token, top-1 agreement,
beside the pruned student before recovery and the teacher. Prints one JSON line per run and the KD − CE
gaps (median, min .. max over seeds). A quality measure: timings are not compared.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.lm_kd_vs_ce import spread
from compress.assets import resolve_model_source
from compress.data import LanguageModelingDataModule
from compress.distill import KDLoss
from compress.modules import DistillationModule
from compress.modules.loading import count_parameters, load_teachers
from compress.sparsity import prune_llm

PRUNINGS = {
    "depth": dict(remove_layers=10),
    "width": dict(ffn_ratio=0.5, head_ratio=1 / 3),
}
LOSSES = {"kd": KDLoss(alpha=0.0, temperature=1.0, divergence="forward_kl"), "ce": KDLoss(alpha=1.0)}
KEYS = ("val/perplexity", "val/kl", "val/top1_agreement", "val/teacher_perplexity")


def data_module(args, seed: int) -> LanguageModelingDataModule:
    return LanguageModelingDataModule(
        "bbc_news", "smollm2-135m", block_size=args.block_size, test_size=50, val_size=50,
        batch_size=args.batch_size, eval_batch_size=8, seed=seed,
    )  # fmt: skip


def pruned_student(pruning: str, folder: Path, args) -> dict:
    """Prunes a fresh copy of the teacher and saves it (with the tokenizer) into ``folder``."""
    source = resolve_model_source("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(source)
    before = count_parameters(model)
    prune_llm(model, data_module(args, seed=0), num_sequences=64, progress=False, **PRUNINGS[pruning])
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return {"pruning": pruning, "parameters": count_parameters(model), "teacher_parameters": before}


def run(teacher, student: Path, loss: str, seed: int, args) -> dict:
    seed_everything(seed)
    module = DistillationModule(teacher, str(student), LOSSES.get(loss, LOSSES["ce"]), learning_rate=args.lr)
    trainer = Trainer(
        max_steps=args.steps, limit_val_batches=args.eval_batches, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        check_val_every_n_epoch=None, val_check_interval=10**9,
    )  # fmt: skip
    data = data_module(args, seed)
    if loss != "pruned":
        trainer.fit(module, datamodule=data)
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    return {"loss": loss, "seed": seed, "steps": trainer.global_step, **{k: metrics[k] for k in KEYS}}


def summary(pruning: str, results: list[dict], args) -> None:
    by = {(r["loss"], r["seed"]): r for r in results}
    tokens = f"{args.batch_size} x {args.block_size}"
    print(f"\n{pruning}: {len(args.seeds)} seeds, {args.steps} steps of {tokens} tokens")
    if {"kd", "ce"} <= set(args.losses):
        for key in KEYS[:3]:
            print(f"  {key}: kd - ce {spread([by['kd', s][key] - by['ce', s][key] for s in args.seeds])}")
    for loss in ("pruned", *args.losses):
        ppl = [by[loss, s]["val/perplexity"] for s in args.seeds]
        kl = [by[loss, s]["val/kl"] for s in args.seeds]
        print(f"  {loss}: perplexity {spread(ppl, '')}, KL {spread(kl, '')}")
    teacher = [by["pruned", s]["val/teacher_perplexity"] for s in args.seeds]
    print(f"  teacher perplexity {spread(teacher, '')}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prunings", nargs="+", choices=list(PRUNINGS), default=list(PRUNINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-batches", type=int, default=10)
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    args = parser.parse_args(argv)
    teacher = load_teachers("smollm2-135m")[0]
    with tempfile.TemporaryDirectory() as tmp:
        for pruning in args.prunings:
            student = Path(tmp) / pruning
            print(json.dumps(pruned_student(pruning, student, args)), flush=True)
            results = []
            for seed in args.seeds:
                for loss in ("pruned", *args.losses):
                    results.append({"pruning": pruning, **run(teacher, student, loss, seed, args)})
                    print(json.dumps(results[-1]), flush=True)
            summary(pruning, results, args)


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()

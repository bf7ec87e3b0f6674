"""One-shot Wanda / SparseGPT pruning with llmcompressor, as an external baseline.

Standalone: it runs under the separate venv that has llmcompressor
(``/work/venv-llmc/bin/python``) and does NOT import ``compress``.  It was written
against llmcompressor 0.14.0 (compressed-tensors 0.19.0, transformers 5.17.0,
torch 2.13.0+cpu) and reads only public entry points of that version:
``llmcompressor.oneshot``, ``WandaPruningModifier``, ``SparseGPTModifier``.

Usage::

    /work/venv-llmc/bin/python bench/llmcompressor_oneshot.py \
        --model DIR --calibration calib.pt --method wanda|sparsegpt \
        --sparsity 0.5 [--pattern 2:4] --output OUT_DIR \
        [--threads 1] [--batch-size 1] [--dampening-frac F] [--block-size B]

``calib.pt`` is ``torch.save``-d LongTensor [rows, tokens] of real token ids (no
padding).  The pruned model is written to OUT_DIR with the plain transformers
``save_pretrained`` (dense safetensors, no compressed-tensors config) so that a
plain transformers install can load it.  stdout gets exactly one JSON line:
``{"method", "sparsity", "pattern", "seconds", "llmcompressor", "threads"}`` where
``seconds`` is the wall time of the ``oneshot(...)`` call alone.  All logging
(loguru, tqdm, transformers) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import types
from pathlib import Path


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF Llama-family causal LM folder")
    p.add_argument("--calibration", required=True, help="torch-saved LongTensor [rows, tokens]")
    p.add_argument("--method", required=True, choices=["wanda", "sparsegpt"])
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--pattern", default=None, help='optional N:M pattern, e.g. "2:4"')
    p.add_argument("--output", required=True, help="folder for the pruned model")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="calibration batch size for oneshot (llmcompressor default 1)",
    )
    p.add_argument(
        "--dampening-frac",
        type=float,
        default=None,
        help="SparseGPT only; default: llmcompressor's own (0.01)",
    )
    p.add_argument(
        "--block-size", type=int, default=None, help="SparseGPT only; default: llmcompressor's own (128)"
    )
    args = p.parse_args(argv)
    if not 0.0 < args.sparsity < 1.0:
        p.error("--sparsity must be in (0, 1)")
    if args.pattern is not None and not re.fullmatch(r"\d+:\d+", args.pattern):
        p.error('--pattern must look like "2:4"')
    if args.pattern is not None:
        # llmcompressor ignores `sparsity` under an N:M mask_structure and prunes N of
        # every M consecutive inputs; refuse a sparsity that would silently not apply.
        n, m = map(int, args.pattern.split(":"))
        if m == 0 or abs(args.sparsity - n / m) > 1e-9:
            p.error(f"--pattern {args.pattern} prunes {n} of every {m}; pass --sparsity {n / m:g}")
    if args.method == "wanda" and (args.dampening_frac is not None or args.block_size is not None):
        p.error("--dampening-frac/--block-size apply to sparsegpt only")
    return args


def main(argv=None) -> int:
    args = _parse_args(argv)

    # llmcompressor's loguru sink is bound to sys.stdout at import time, and tqdm /
    # transformers print too: point fd 1 at stderr for the whole run and keep a
    # private handle on the real stdout for the single JSON result line.
    sys.stdout.flush()
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    import torch

    torch.set_num_threads(args.threads)

    import llmcompressor
    from compressed_tensors.offload import remove_dispatch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.load(args.calibration, map_location="cpu")
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2 and not ids.is_floating_point()):
        raise SystemExit(f"{args.calibration}: expected a 2-D integer tensor, got {type(ids)}")
    ids = ids.long()
    rows, tokens = ids.shape
    calib = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()

    # Prune the Linear layers inside the decoder blocks only.  targets are the decoder
    # block classes (the same classes the sequential pipeline splits on); the modifier
    # then prunes every Linear/Conv inside each matched block.  lm_head is outside the
    # blocks; it is also ignored explicitly.  Embeddings are never pruned (not Linear).
    block_classes = list(getattr(model, "_no_split_modules", None) or [])
    if not block_classes:
        raise SystemExit("model has no _no_split_modules; cannot tell its decoder blocks")
    common = dict(
        sparsity=args.sparsity,
        mask_structure=args.pattern or "0:0",
        targets=block_classes,
        ignore=["re:.*lm_head"],
    )
    if args.method == "wanda":
        modifier = WandaPruningModifier(**common)
    else:
        extra = {}
        if args.dampening_frac is not None:
            extra["dampening_frac"] = args.dampening_frac
        if args.block_size is not None:
            extra["block_size"] = args.block_size
        modifier = SparseGPTModifier(**common, **extra)

    # oneshot insists on a processor whenever a dataset is given, even an already
    # tokenised one (the "truncation" collator never uses it).  Use the folder's
    # tokenizer when there is one, else a placeholder.
    try:
        processor = AutoTokenizer.from_pretrained(args.model)
    except Exception:  # noqa: BLE001 - any failure: the folder has no usable tokenizer
        processor = types.SimpleNamespace(pad_token=None, pad_token_id=None)

    # output_dir=None: oneshot does not save (its wrapped save_pretrained would add
    # a compressed-tensors config); we save with plain transformers below.
    t0 = time.perf_counter()
    oneshot(
        model=model,
        processor=processor,
        recipe=[modifier],
        dataset=calib,
        num_calibration_samples=rows,
        max_seq_length=tokens,
        batch_size=args.batch_size,
        shuffle_calibration_samples=False,
        data_collator="truncation",
        pipeline="sequential",
        output_dir=None,
    )
    seconds = time.perf_counter() - t0

    # oneshot leaves compressed-tensors offload wrappers on every module and
    # replaces model.save_pretrained; undo both, then save plain dense weights.
    remove_dispatch(model, onload_tensors=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    type(model).save_pretrained(model, str(out))
    if not isinstance(processor, types.SimpleNamespace):
        processor.save_pretrained(str(out))

    print(
        json.dumps(
            {
                "method": args.method,
                "sparsity": args.sparsity,
                "pattern": args.pattern,
                "seconds": round(seconds, 3),
                "llmcompressor": llmcompressor.__version__,
                "threads": args.threads,
            }
        ),
        file=result_out,
        flush=True,
    )
    result_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

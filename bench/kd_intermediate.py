"""KD + intermediate-layer (hidden-state MSE) student vs the demo's CE student, per data seed.

Reuses each seed's teacher and CE student from `bash bench/kd_vs_ce_seeds.sh 0 1 2` and writes under
runs/alt-intermediate/. Usage: python bench/kd_intermediate.py 0 1 2
"""

import json
import sys
from pathlib import Path

import yaml

from compress.commands.pipeline.fit import run_fit_stage

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "examples" / "distill_intermediate.yaml"

for seed in sys.argv[1:] or ["0"]:
    root = Path(f"runs/kd_vs_ce-seed{seed}/stages")
    overrides = [] if seed == "0" else [f"--data.seed={seed}", f"--seed_everything={seed}"]
    text = CONFIG.read_text().replace("runs/default/stages/teacher/model", str(root / "teacher" / "model"))
    out = Path(f"runs/alt-intermediate/seed{seed}/student_kd")
    kd = run_fit_stage(out, yaml.safe_load(text), overrides, f"intermediate-{seed}")["test_acc"]
    ce = json.loads((root / "student_ce" / "manifest.json").read_text())["result"]["test_acc"]
    print(
        f"seed {seed}: KD+intermediate {kd:.3f}  CE {ce:.3f}  difference {100 * (kd - ce):+.1f} pts",
        flush=True,
    )

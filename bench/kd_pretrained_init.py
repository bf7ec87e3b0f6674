"""KD vs CE students initialised from the PRETRAINED MiniLM layers 0, 2, 4, per data seed.

Reuses each seed's fine-tuned teacher from `bash bench/kd_vs_ce_seeds.sh 0 1 2` and writes under
runs/alt-pretrained-init/. Usage: python bench/kd_pretrained_init.py 0 1 2
"""

import sys
from pathlib import Path

import yaml

from compress.commands.pipeline.fit import run_fit_stage

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "examples"
STUDENTS = (("student_kd", "distill_pretrained_init.yaml"), ("student_ce", "student_ce_pretrained_init.yaml"))

for seed in sys.argv[1:] or ["0"]:
    teacher = Path(f"runs/kd_vs_ce-seed{seed}/stages/teacher/model")
    out = Path(f"runs/alt-pretrained-init/seed{seed}")
    overrides = [] if seed == "0" else [f"--data.seed={seed}", f"--seed_everything={seed}"]
    acc = {}
    for name, config in STUDENTS:
        text = (CONFIGS / config).read_text().replace("runs/default/stages/teacher/model", str(teacher))
        config = yaml.safe_load(text)
        acc[name] = run_fit_stage(out / name, config, overrides, f"pretrained-init-{seed}-{name}")["test_acc"]
    gap = 100 * (acc["student_kd"] - acc["student_ce"])
    print(
        f"seed {seed}: KD {acc['student_kd']:.3f}  CE {acc['student_ce']:.3f}  KD-CE {gap:+.1f} pts",
        flush=True,
    )

#!/usr/bin/env bash
# Runs configs/pipelines/kd_vs_ce.yaml (teacher, KD student, CE student) on several data seeds (different
# splits, teacher re-trained) to see whether a KD-over-CE gap holds beyond one seed. ~9 minutes per seed on
# 2 cores. Usage: bash bench/kd_vs_ce_seeds.sh 0 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
seeds=("${@:-0 1 2}")
for seed in ${seeds[@]}; do
  .venv/bin/compress pipeline --config configs/pipelines/kd_vs_ce.yaml --output "runs/kd_vs_ce-seed$seed" \
    --set "data.seed=$seed" "seed_everything=$seed"
done
for seed in ${seeds[@]}; do
  .venv/bin/python - "runs/kd_vs_ce-seed$seed/summary.json" "$seed" <<'PY'
import json, sys
r = {x["stage"]: x["result"] for x in json.load(open(sys.argv[1]))}
print(f"seed {sys.argv[2]}: teacher {r['teacher']['test_acc']:.3f}  KD {r['student_kd']['test_acc']:.3f}  "
      f"CE {r['student_ce']['test_acc']:.3f}  KD-CE {100 * (r['student_kd']['test_acc'] - r['student_ce']['test_acc']):+.1f} pts")
PY
done

#!/usr/bin/env bash
# Runs configs/pipelines/prune_kd_vs_ce.yaml (the default pipeline's student, 70% of its FFN channels pruned
# and recovered with KD or with CE only) over training-order seeds (same splits, teacher and student: those
# of runs/default, made first if missing). ~4 minutes per seed on 2 cores.
# Usage: bash bench/prune_kd_vs_ce_seeds.sh 0 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
seeds=("${@:-0 1 2}")
if [ ! -f runs/default/stages/student/model/config.json ]; then
  .venv/bin/compress pipeline --config configs/pipelines/default.yaml --output runs/default
fi
for seed in ${seeds[@]}; do
  .venv/bin/compress pipeline --config configs/pipelines/prune_kd_vs_ce.yaml \
    --output "runs/prune_kd_vs_ce-seed$seed" --set "data.order_seed=$seed" "seed_everything=$seed"
done
for seed in ${seeds[@]}; do
  .venv/bin/python - "runs/prune_kd_vs_ce-seed$seed/summary.json" "$seed" <<'PY'
import json, sys
r = {x["stage"]: x["result"] for x in json.load(open(sys.argv[1]))}
kd, ce = r["pruned_kd"]["test_acc"], r["pruned_ce"]["test_acc"]
print(f"seed {sys.argv[2]}: pruned+KD {kd:.3f}  pruned+CE {ce:.3f}  KD-CE {100 * (kd - ce):+.1f} pts")
PY
done

#!/usr/bin/env bash
# Replicates `make demo` on other data seeds (different splits, teacher re-trained) to see whether the
# KD-over-CE gap of the demo holds beyond one seed. Prints each seed's table; ~9 minutes per seed on 2 cores.
# Usage: bash bench/kd_vs_ce_seeds.sh 1 2
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for seed in "${@:-1 2}"; do
  .venv/bin/compress demo --output "runs/demo-seed$seed" --set "data.seed=$seed" "seed_everything=$seed"
done
for seed in 0 "${@:-1 2}"; do
  dir=runs/demo; [ "$seed" = 0 ] || dir="runs/demo-seed$seed"
  [ -f "$dir/results.json" ] && .venv/bin/python - "$dir/results.json" "$seed" <<'PY'
import json, sys
r = {x["stage"]: x for x in json.load(open(sys.argv[1]))}
print(f"seed {sys.argv[2]}: teacher {r['teacher']['test_acc']:.3f}  KD {r['student_kd']['test_acc']:.3f}  "
      f"CE {r['student_ce']['test_acc']:.3f}  KD-CE {100 * (r['student_kd']['test_acc'] - r['student_ce']['test_acc']):+.1f} pts")
PY
done

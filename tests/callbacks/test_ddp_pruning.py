import os
import subprocess
import sys

import torch


def test_two_cpu_processes_agree_on_masks_and_weights(tiny_teacher_dir, tiny_csv, tokenizer_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tests.callbacks.ddp_pruning_run", tiny_teacher_dir, tiny_csv, tokenizer_dir]
    done = subprocess.run([*cmd, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 5
    masks = [r["masks"] for r in ranks]
    assert masks[0].keys() == masks[1].keys() and len(masks[0]) > 0
    for name, mask in masks[0].items():
        assert torch.equal(mask, masks[1][name]), name
    pruned = sum(int((~m).sum()) for m in masks[0].values()) / sum(m.numel() for m in masks[0].values())
    assert abs(pruned - 0.6) < 1e-3
    for name, weight in ranks[0]["student"].items():
        assert torch.equal(weight, ranks[1]["student"][name]), name

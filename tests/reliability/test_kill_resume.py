"""kill -9 at a random step, resume from the last checkpoint: the same end state as an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 15  # 3 epochs of 5 batches


def _command(dirs, root):
    return [sys.executable, "-m", "tests.reliability.kill_resume_run", *dirs, str(root)]


def _finish(dirs, root) -> dict:
    done = subprocess.run(_command(dirs, root), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(root / "final.pt", weights_only=True)


def _kill_at(dirs, root, step: int) -> None:
    """Start a run and SIGKILL it once it has begun ``step`` (no cleanup, maybe mid-checkpoint)."""
    root.mkdir()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(_command(dirs, root), env=ENV, **quiet)
    marker = root / "step"
    while process.poll() is None:
        seen = marker.read_text() if marker.exists() else ""  # read once: the run rewrites it every step
        if seen.isdigit() and int(seen) >= step:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (root / "final.pt").exists()


def _assert_same(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def straight(tiny_teacher_dir, tiny_csv, tokenizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    return _finish((tiny_teacher_dir, tiny_csv, tokenizer_dir), root)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(
    seed, straight, tiny_teacher_dir, tiny_csv, tokenizer_dir, tmp_path
):
    dirs = (tiny_teacher_dir, tiny_csv, tokenizer_dir)
    step = random.Random(seed).randrange(3, STEPS - 1)
    _kill_at(dirs, tmp_path / "run", step)
    resumed = _finish(dirs, tmp_path / "run")
    assert straight["steps"] == resumed["steps"] == STEPS
    assert straight["masks"] and straight["metrics"]
    _assert_same(straight, resumed)

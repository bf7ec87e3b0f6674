"""Shared pieces of `make bench` (bench/run.py): the real models and data, step timing, result entries.

Every measure compares variants side by side in one process (the machine may be shared), alternating
them round by round, and reports a ratio with the absolute numbers it came from.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402
from lightning.pytorch.callbacks import TQDMProgressBar  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from compress.assets import resolve_model_source  # noqa: E402
from compress.commands.lightning_cli import PROGRESS_REFRESH  # noqa: E402  (what `compress fit` and the pipeline use)
from compress.data import TextClassificationDataModule  # noqa: E402
from compress.modules.loading import load_model  # noqa: E402
from compress.peft import StudentFromTeacher  # noqa: E402
from compress.safe_load import load_pretrained  # noqa: E402

TEACHER = "minilm-l6"  # real 6-layer MiniLM weights (offline); speed does not need a fine-tuned head
STUDENT_LAYERS = [0, 2, 4]
BATCH, MAX_LENGTH = 32, 64


NOISE = 0.02  # alternated rounds of equal work on this machine differ by up to ~2%: the slack of `bound`


@dataclass
class Entry:
    """One line of bench/results.json: ``ratio`` (the median over rounds) against ``goal``, with the
    interval its per-round ratios span.

    The verdict uses the whole interval: ``met`` when every round meets the goal, ``not met`` when none
    does, ``not shown`` when the rounds straddle it. ``bound`` is what equal work cannot beat: 1.0 for
    "same maths, more machinery" (``better="lower"``: a framework cannot be faster than the loop doing the
    same work) and for a share of an ideal (``better="higher"``: nothing exceeds the ideal). An interval
    lying wholly beyond the bound (by more than `NOISE`) is ``impossible``: the two sides did not do the
    same work, and the entry is never ``met``.
    """

    name: str
    ratio: float
    goal: float
    better: str  # "higher" | "lower" | "close" (|ratio - goal| <= tolerance)
    numbers: dict = field(default_factory=dict)
    note: str = ""
    tolerance: float = 0.0
    rounds: list[float] = field(default_factory=list)  # per-round ratios; empty: one measurement
    bound: float | None = None

    @property
    def interval(self) -> tuple[float, float]:
        values = self.rounds or [self.ratio]
        return min(values), max(values)

    @property
    def verdict(self) -> str:
        low, high = self.interval
        if self.bound is not None and self._beyond_bound(low, high):
            return "impossible"
        if self.better == "close":
            meets = all(abs(x - self.goal) <= self.tolerance for x in (low, high))
            misses = (high < self.goal - self.tolerance) or (low > self.goal + self.tolerance)
        elif self.better == "higher":
            meets, misses = low >= self.goal, high < self.goal
        else:
            meets, misses = high <= self.goal, low > self.goal
        return "met" if meets else "not met" if misses else "not shown"

    def _beyond_bound(self, low: float, high: float) -> bool:
        if self.better == "higher":  # a share of an ideal: above 1 cannot be
            return low > self.bound * (1 + NOISE)
        return high < self.bound * (1 - NOISE)  # same work plus machinery: faster cannot be

    @property
    def met(self) -> bool:
        return self.verdict == "met"

    def as_dict(self) -> dict:
        low, high = self.interval
        return {
            "name": self.name,
            "ratio": round(self.ratio, 4),
            "interval": [round(low, 4), round(high, 4)],
            "rounds": len(self.rounds) or 1,
            "goal": self.goal,
            "better": self.better,
            "tolerance": self.tolerance,
            "bound": self.bound,
            "verdict": self.verdict,
            "met": self.met,
            "numbers": self.numbers,
            "note": self.note,
        }


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def datamodule(train_rows: int, **overrides) -> TextClassificationDataModule:
    """Rotten Tomatoes (offline), the default pipeline's splits, ``train_rows`` training rows."""
    settings = dict(
        source="rotten_tomatoes",
        tokenizer=TEACHER,
        test_size=1000,
        val_size=500,
        max_train_examples=train_rows,
        max_length=MAX_LENGTH,
        batch_size=BATCH,
        seed=0,
    )
    data = TextClassificationDataModule(**{**settings, **overrides})
    data.setup("fit")
    return data


def teacher_and_student(num_labels: int = 2, seed: int = 0):
    """The real MiniLM-L6 (random 2-label head) and a 3-layer student initialised from its layers 0, 2, 4."""
    torch.manual_seed(seed)
    teacher = load_pretrained(
        AutoModelForSequenceClassification,
        resolve_model_source(TEACHER),
        "bench.teacher",
        num_labels=num_labels,
    ).eval()
    student = load_model(StudentFromTeacher(layers=STUDENT_LAYERS), num_labels, "bench.student", teacher)
    return teacher, student


def copies(*models):
    return [copy.deepcopy(m) for m in models]


def non_embedding_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".embeddings." not in n)


class StepTimes(Callback):
    """Wall time of every training step, from one step's start to the next one's (data, logging and
    progress bar included); the last step ends at its ``on_train_batch_end``."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0
        self.epochs: list[int] = []

    def on_train_batch_start(self, trainer, *args) -> None:
        self.starts.append(time.perf_counter())
        self.epochs.append(trainer.current_epoch)

    def on_train_batch_end(self, *args) -> None:
        self.end = time.perf_counter()

    def durations(self, epoch: int | None = None, skip: int = 0) -> list[float]:
        ends = [*self.starts[1:], self.end]
        steps = [(e - s, ep) for s, e, ep in zip(self.starts, ends, self.epochs, strict=True)]
        return [d for d, ep in steps[skip:] if epoch is None or ep == epoch]


def trainer(
    steps: int = -1, epochs: int = 1, callbacks=(), progress_refresh: int = PROGRESS_REFRESH, **overrides
) -> Trainer:
    """A fit-only Trainer as a user would run it: no logger, a progress bar redrawn every
    ``progress_refresh`` steps (compress's default; 1 is Lightning's, 0 turns the bar off)."""
    bar = [TQDMProgressBar(refresh_rate=progress_refresh)] if progress_refresh else []
    settings = dict(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(progress_refresh),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[*bar, *callbacks],
    )
    return Trainer(**{**settings, **overrides})


def median(values) -> float:
    return statistics.median(values)

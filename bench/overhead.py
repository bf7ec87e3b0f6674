"""What compress + Lightning cost over a hand-written PyTorch loop doing the same maths on the same batches.

1. KD: `DistillationModule` (KDLoss alpha 0.5, T 2; AdamW with no decay on biases/norms, 10% warm-up, linear
   decay) in a Lightning `Trainer` with its progress bar, vs a plain loop with a tqdm bar computing the same:
   teacher logits without grad, `KDLoss`, backward, AdamW step, scheduler step.
2. LoRA: `TaskModule(adapter=LoraConfig(...))` in a `Trainer` vs `peft.get_peft_model` on the same student
   and the same config in a plain loop (cross-entropy, the same optimizer and schedule).

Like for like: both variants start from copies of the same weights and the same seed, read the same
`DataLoader` (the same `EpochShuffle` order), build the same optimizer (fused AdamW, the same two weight-
decay groups, the same warm-up schedule) and draw the same progress bar: the hand-written loop's tqdm
redraws every ``refresh`` steps exactly as Lightning's `TQDMProgressBar(refresh_rate=refresh)` does
(``miniters=refresh, mininterval=0``; before, tqdm's default redrew on a 0.1 s clock instead), and free
the gradients at the same point, right after the optimizer step (compress's modules do it in
``optimizer_step``; before, the hand loop kept them alive through the next forward, one more copy of the
student's size in memory, and an Intel Xeon gave rounds of 0.89 .. 1.06, four of five below 1). Their
losses agree step by step (reported: the largest difference). Time: wall time from the start of step
``SKIP`` to the end of the last step (data loading, logging and progress bar included), the same window
on both sides; rounds alternate the order of the two variants; ratio = ours / hand-written per round,
reported as the median and the min .. max over rounds. The same work with more machinery cannot be
faster: an interval wholly below 1 is flagged ``impossible`` (`bench.common.Entry`), never ``met``.
"""

from __future__ import annotations

import time

import torch
from lightning.pytorch import seed_everything
from peft import LoraConfig, get_peft_model
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from bench.common import Entry, StepTimes, copies, datamodule, median, teacher_and_student, trainer
from bench.rounds import ROUNDS
from compress.commands.lightning_cli import PROGRESS_REFRESH
from compress.distill import KDLoss
from compress.modules import DistillationModule, TaskModule
from compress.modules.task import model_inputs

SKIP = 5  # warm-up steps left out of the timing
LR, WARMUP = 1e-4, 0.1


def lora_config() -> LoraConfig:
    return LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"], task_type="SEQ_CLS"
    )


def optimizer_and_schedule(model: torch.nn.Module, steps: int, lr: float):
    """What the modules' default optimizer and schedule (`compress.modules.optim.Optimization`) build."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in named if p.ndim > 1], "weight_decay": 0.01},
        {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, fused=True)
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(WARMUP * steps), steps)


def hand_loop(
    student, teacher, data, steps: int, lr: float, refresh: int = PROGRESS_REFRESH
) -> tuple[float, list[float]]:
    """(seconds from step SKIP to the end, losses): the loop a user would write without compress."""
    seed_everything(0, verbose=False)
    optimizer, schedule = optimizer_and_schedule(student, steps, lr)
    kd = KDLoss(alpha=0.5, temperature=2.0)
    student.train()
    losses, start = [], 0.0
    loader = iter(data.train_dataloader())
    batches = tqdm(loader, total=steps, desc="hand-written", miniters=refresh, mininterval=0)
    seed_everything(0, verbose=False)  # dropout draws start here, as in `Losses.on_train_start`
    for step, batch in enumerate(batches):
        if step == SKIP:
            start = time.perf_counter()
        logits = student(**model_inputs(batch)).logits
        if teacher is None:
            loss = F.cross_entropy(logits, batch["labels"])
        else:
            with torch.no_grad():
                teacher_logits = teacher(**model_inputs(batch)).logits
            loss = kd(logits, teacher_logits, batch["labels"])
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)  # right after the step, as compress's modules free them
        losses.append(loss.item())
        if step + 1 == steps:
            break
    return time.perf_counter() - start, losses


class Losses(StepTimes):
    """Step times and losses; reseeds when training starts (Lightning has drawn from the torch generator for
    its data iterators by then, a different number of times than a plain loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_start(self, *args) -> None:
        seed_everything(0, verbose=False)

    def on_train_batch_end(self, trainer, module, outputs, *args) -> None:
        self.losses.append(outputs["loss"].item())  # before the clock stops, as in the hand-written loop
        super().on_train_batch_end()


def lightning_run(module, data, steps: int, refresh: int = PROGRESS_REFRESH) -> tuple[float, list[float]]:
    """Fit ``steps`` steps, the progress bar redrawn every ``refresh`` steps (1: Lightning's default)."""
    seed_everything(0, verbose=False)
    timer = Losses()
    trainer(steps=steps, epochs=-1, callbacks=[timer], progress_refresh=refresh).fit(module, datamodule=data)
    return timer.end - timer.starts[SKIP], timer.losses


def compare(
    name: str, ours, hand, rounds: int, goal: float, better: str, tolerance: float, note: str
) -> Entry:
    times = {"ours": [], "hand": []}
    gap = 0.0
    for r in range(rounds):
        order = [("ours", ours), ("hand", hand)] if r % 2 else [("hand", hand), ("ours", ours)]
        losses = {}
        for key, run in order:
            seconds, losses[key] = run()
            times[key].append(seconds)
        gap = max(gap, max(abs(a - b) for a, b in zip(losses["ours"], losses["hand"], strict=True)))
    ratios = [o / h for o, h in zip(times["ours"], times["hand"], strict=True)]
    numbers = {
        "ours_s": [round(t, 3) for t in times["ours"]],
        "hand_s": [round(t, 3) for t in times["hand"]],
        "round_ratios": [round(x, 4) for x in ratios],
        "largest_loss_difference": gap,
    }
    return Entry(name, median(ratios), goal, better, numbers, note, tolerance, rounds=ratios, bound=1.0)


def measure(quick: bool = False) -> list[Entry]:
    steps, rounds = (15, 2) if quick else (40, ROUNDS)
    data = datamodule(train_rows=2000)
    teacher, student = teacher_and_student()

    def ours_kd():
        t, s = copies(teacher, student)
        module = DistillationModule(
            teacher=t, student=s, loss=KDLoss(0.5, 2.0), learning_rate=LR, warmup_ratio=WARMUP
        )
        return lightning_run(module, data, steps)

    def ours_kd_lightning_bar():  # Lightning's default progress bar: redrawn at every step
        t, s = copies(teacher, student)
        module = DistillationModule(
            teacher=t, student=s, loss=KDLoss(0.5, 2.0), learning_rate=LR, warmup_ratio=WARMUP
        )
        return lightning_run(module, data, steps, refresh=1)

    def hand_kd():
        t, s = copies(teacher, student)
        return hand_loop(s, t, data, steps, LR)

    def hand_kd_every_step():  # the same redraws as Lightning's default bar
        t, s = copies(teacher, student)
        return hand_loop(s, t, data, steps, LR, refresh=1)

    def ours_lora():
        (s,) = copies(student)
        return lightning_run(
            TaskModule(s, learning_rate=1e-3, warmup_ratio=WARMUP, adapter=lora_config()), data, steps
        )

    def peft_lora():
        (s,) = copies(student)
        return hand_loop(get_peft_model(s, lora_config()), None, data, steps, 1e-3)

    timed = f"{steps - SKIP} steps at batch {data.hparams.batch_size}, {rounds} rounds"
    return [
        compare(
            "framework overhead: DistillationModule in Trainer / hand-written KD loop",
            ours_kd,
            hand_kd,
            rounds,
            1.02,
            "lower",
            0.0,
            f"step time ratio, progress bars on; {timed}",
        ),
        compare(
            "framework overhead with Lightning's default progress bar (redrawn every step) / hand-written",
            ours_kd_lightning_bar,
            hand_kd_every_step,
            rounds,
            1.02,
            "lower",
            0.0,
            f"TQDMProgressBar(refresh_rate=1) against tqdm redrawn every step; {timed}",
        ),
        compare(
            "LoRA: TaskModule(adapter=LoraConfig) in Trainer / peft.get_peft_model in a hand-written loop",
            ours_lora,
            peft_lora,
            rounds,
            1.0,
            "close",
            0.05,
            f"step time ratio; {timed}",
        ),
    ]

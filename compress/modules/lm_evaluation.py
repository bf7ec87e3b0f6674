"""Validation and test of a causal LM: held-out perplexity and, beside a teacher, how close the student is.

Every metric is over next-token positions (`NextTokens`): the loss and perplexity over positions with a
label (a chat prompt's tokens are left out under ``completion_only``), KL and agreement over every real
position, as in training. Metrics are torchmetrics objects, so they accumulate over the epoch and are
reduced over DDP ranks.

Example:
    >>> from compress.modules.lm_evaluation import LanguageModelEvaluation
    >>> evaluation = LanguageModelEvaluation(with_teacher=True)
    >>> sorted(evaluation.metrics["val"].keys())
    ['kl', 'perplexity', 'teacher_perplexity', 'top1_agreement']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from compress.distill.causal_lm import NextTokens
from compress.distill.losses import IGNORE_INDEX
from compress.modules.evaluation import Evaluation


class LanguageModelEvaluation(Evaluation):
    """The evaluation metrics of a causal-LM module and the bodies of its evaluation hooks.

    Logs ``<split>/loss`` (mean next-token cross-entropy), ``<split>/perplexity`` and, with a teacher,
    ``<split>/teacher_perplexity``, ``<split>/kl`` (KL(P_t ‖ P_s) per token at temperature 1) and
    ``<split>/top1_agreement`` (share of positions where both predict the same next token). The module
    provides ``module(batch)`` (student logits) and, with a teacher, ``module.teacher_logits(batch)``.

    Args:
        with_teacher: also compare with the module's teacher.
    """

    def __init__(self, with_teacher: bool = False) -> None:
        super().__init__()
        self.with_teacher = with_teacher
        self.metrics = nn.ModuleDict({split: self._metrics() for split in ("val", "test")})

    def _metrics(self) -> nn.ModuleDict:
        metrics = {"perplexity": Perplexity(ignore_index=IGNORE_INDEX)}
        if self.with_teacher:
            metrics.update(
                teacher_perplexity=Perplexity(ignore_index=IGNORE_INDEX),
                kl=MeanMetric(),
                top1_agreement=MeanMetric(),
            )
        return nn.ModuleDict(metrics)

    def validation_step(self, module: LightningModule, batch: dict[str, Tensor]) -> None:
        self._evaluate(module, batch, "val")

    def test_step(self, module: LightningModule, batch: dict[str, Tensor]) -> None:
        self._evaluate(module, batch, "test")

    def _evaluate(self, module: LightningModule, batch: dict[str, Tensor], split: str) -> None:
        tokens = NextTokens.of(batch)
        targets = torch.full(tokens.valid.shape, IGNORE_INDEX, device=tokens.valid.device)
        targets[tokens.valid] = tokens.labels
        student = module(batch)[:, :-1].float()
        metrics = self.metrics[split]
        metrics["perplexity"].update(student, targets)
        labelled = int(tokens.labelled)
        if labelled:
            nll = F.cross_entropy(student[tokens.valid], tokens.labels, ignore_index=IGNORE_INDEX)
            module.log(f"{split}/loss", nll, batch_size=labelled, sync_dist=True)
        if self.with_teacher:
            teacher = module.teacher_logits(batch)[:, :-1].float()
            metrics["teacher_perplexity"].update(teacher, targets)
            s, t = student[tokens.valid], teacher[tokens.valid]
            kl = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="none").sum(-1)
            metrics["kl"].update(kl)
            metrics["top1_agreement"].update((s.argmax(-1) == t.argmax(-1)).float())
        for name, metric in metrics.items():
            module.log(f"{split}/{name}", metric, prog_bar=name == "perplexity")

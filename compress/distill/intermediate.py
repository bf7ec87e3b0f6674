"""Intermediate-layer distillation: match hidden states (MSE or cosine) and attention maps (KL).

Student layer i is matched with teacher layer ``layer_map[i]``; by default the uniform mapping
``round((i+1)·L_T/L_S) − 1`` (the last student layer meets the last teacher layer). When widths
differ, a learned linear projection maps each student hidden state to the teacher's width
(TinyBERT). Padding positions never count.

Example:
    >>> import torch
    >>> from compress.distill.intermediate import IntermediateDistillation
    >>> matching = IntermediateDistillation(hidden_weight=1.0, hidden_loss="cosine").build(
    ...     student_layers=2, teacher_layers=4, student_width=16, teacher_width=32)
    >>> student = tuple(torch.randn(3, 5, 16) for _ in range(3))  # embeddings + 2 layers
    >>> teacher = tuple(torch.randn(3, 5, 32) for _ in range(5))
    >>> matching(student, teacher, attention_mask=torch.ones(3, 5))["hidden"].shape
    torch.Size([])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer matched with each student layer: ``round((i+1)·L_T/L_S) − 1``."""
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


@dataclass
class IntermediateDistillation:
    """Which intermediate signals to distil and how much they weigh (added to the logit KD loss).

    Args:
        hidden_weight: weight of the hidden-state term (0 turns it off).
        attention_weight: weight of the attention-map KL term (0 turns it off; needs eager attention,
            which the module switches on for both models).
        hidden_loss: ``mse`` or ``cosine`` (1 − cosine similarity per position).
        layer_map: teacher layer index for each student layer (default: uniform mapping).
    """

    hidden_weight: float = 1.0
    attention_weight: float = 0.0
    hidden_loss: Literal["mse", "cosine"] = "mse"
    layer_map: list[int] | None = None

    def __post_init__(self) -> None:
        for name in ("hidden_weight", "attention_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"IntermediateDistillation.{name}: {getattr(self, name)!r} must be >= 0")
        if self.hidden_weight == 0 and self.attention_weight == 0:
            raise ValueError(
                "IntermediateDistillation: hidden_weight and attention_weight are both 0; "
                "set one of them > 0 or drop the intermediate setting"
            )
        if self.hidden_loss not in ("mse", "cosine"):
            raise ValueError(
                f"IntermediateDistillation.hidden_loss: {self.hidden_loss!r} must be 'mse' or 'cosine'"
            )

    def build(self, student_layers: int, teacher_layers: int, student_width: int, teacher_width: int):
        """The trainable loss module for a given student/teacher pair."""
        layer_map = (
            self.layer_map
            if self.layer_map is not None
            else uniform_layer_map(student_layers, teacher_layers)
        )
        if len(layer_map) != student_layers or not all(0 <= t < teacher_layers for t in layer_map):
            raise ValueError(
                f"IntermediateDistillation.layer_map: {layer_map!r} needs one teacher layer in "
                f"0..{teacher_layers - 1} for each of the {student_layers} student layers"
            )
        return IntermediateLoss(self, layer_map, student_width, teacher_width)

    def build_for(self, student: nn.Module, teacher: nn.Module) -> IntermediateLoss:
        """`build` for two Hugging Face models; both switch to eager attention when maps are matched."""
        s, t = student.config, teacher.config
        matching = self.build(s.num_hidden_layers, t.num_hidden_layers, s.hidden_size, t.hidden_size)
        if matching.needs_attentions:  # sdpa kernels do not return attention maps
            for model in (student, teacher):
                model.set_attn_implementation("eager")
        return matching


class IntermediateLoss(nn.Module):
    """Hidden-state and attention matching for mapped layers; holds the learned width projections."""

    def __init__(
        self, settings: IntermediateDistillation, layer_map: list[int], student_width: int, teacher_width: int
    ) -> None:
        super().__init__()
        self.settings, self.layer_map = settings, list(layer_map)
        needs_projection = student_width != teacher_width and settings.hidden_weight > 0
        self.projections = nn.ModuleList(
            [nn.Linear(student_width, teacher_width) for _ in layer_map] if needs_projection else []
        )

    @property
    def needs_attentions(self) -> bool:
        return self.settings.attention_weight > 0

    def forward(
        self,
        student_hidden: tuple[Tensor, ...],
        teacher_hidden: tuple[Tensor, ...],
        attention_mask: Tensor | None = None,
        student_attentions: tuple[Tensor, ...] | None = None,
        teacher_attentions: tuple[Tensor, ...] | None = None,
    ) -> dict[str, Tensor]:
        """``{"loss", "hidden", "attention"}``; hidden-state tuples include the embeddings at index 0."""
        zero = student_hidden[-1].sum() * 0.0
        mask = attention_mask if attention_mask is not None else torch.ones(student_hidden[-1].shape[:2])
        mask = mask.to(student_hidden[-1].device, torch.bool)
        hidden = (
            self._hidden(student_hidden, teacher_hidden, mask) if self.settings.hidden_weight > 0 else zero
        )
        attention = zero
        if self.needs_attentions:
            if student_attentions is None or teacher_attentions is None:
                raise ValueError(
                    "IntermediateLoss: attention_weight > 0 needs the attention maps of both models"
                )
            attention = self._attention(student_attentions, teacher_attentions, mask)
        loss = self.settings.hidden_weight * hidden + self.settings.attention_weight * attention
        return {"loss": loss, "hidden": hidden, "attention": attention}

    def _hidden(self, student: tuple[Tensor, ...], teacher: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        terms = []
        for i, t in enumerate(self.layer_map):
            s_state, t_state = student[i + 1][mask], teacher[t + 1][mask].detach()  # (N, width), no padding
            if self.projections:
                s_state = self.projections[i](s_state)
            if self.settings.hidden_loss == "mse":
                terms.append(F.mse_loss(s_state.float(), t_state.float()))
            else:
                terms.append((1 - F.cosine_similarity(s_state.float(), t_state.float(), dim=-1)).mean())
        return torch.stack(terms).mean()

    def _attention(self, student: tuple[Tensor, ...], teacher: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        terms = []
        for i, t in enumerate(self.layer_map):
            # average over heads so students with fewer heads still match; KL per valid query row
            s_map, t_map = student[i].float().mean(1)[mask], teacher[t].detach().float().mean(1)[mask]
            kl = (t_map * (t_map.clamp_min(1e-12).log() - s_map.clamp_min(1e-12).log())).sum(-1)
            terms.append(kl.mean())
        return torch.stack(terms).mean()

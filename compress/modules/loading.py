"""Turning a model source (folder, alias, module, or student recipe) into a sequence classifier."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from peft import PeftConfig
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from compress.assets import resolve_model_source
from compress.peft.adapters import attach_adapter, peft_config_to_dict
from compress.peft.selective import SelectiveTuning
from compress.peft.student import StudentFromTeacher
from compress.safe_load import load_pretrained

ModelSource = str | nn.Module | StudentFromTeacher


def load_classifier(
    source: ModelSource, num_labels: int | None, field: str, teacher: PreTrainedModel | None = None
) -> nn.Module:
    """A sequence-classification model from ``source``; ``field`` names the setting in errors."""
    if isinstance(source, dict):  # a recipe as stored in a checkpoint's hyper-parameters
        source = StudentFromTeacher(**source)
    if isinstance(source, nn.Module):
        return source
    if isinstance(source, StudentFromTeacher):
        if source.source is not None:
            teacher = load_classifier(source.source, num_labels, f"{field}.source")
        if teacher is None:
            raise ValueError(
                f"{field}: StudentFromTeacher needs `source` (a model folder or alias such as "
                "minilm-l6) when there is no distillation teacher to copy from"
            )
        return source.build(teacher)
    path = resolve_source(source, field)
    config = AutoConfig.from_pretrained(path)
    if num_labels is not None and _is_classifier(config) and config.num_labels != num_labels:
        raise ValueError(
            f"{field}: {source!r} has a classifier head with {config.num_labels} labels but the "
            f"data has {num_labels}; use a model fine-tuned on this label set, or its base model"
        )
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    return load_pretrained(AutoModelForSequenceClassification, path, field, **kwargs)


def load_teacher(source: str | nn.Module, field: str = "teacher") -> nn.Module:
    """A fine-tuned teacher: refuses a base model whose classifier head would be random."""
    if isinstance(source, str):
        path = resolve_source(source, field)
        if not _is_classifier(AutoConfig.from_pretrained(path)):
            raise ValueError(
                f"{field}: {source!r} is not a fine-tuned classifier (its config lists no "
                "*ForSequenceClassification architecture); fine-tune it first with TaskModule "
                "(`compress fit --config configs/examples/finetune_teacher.yaml`) and pass the saved folder"
            )
    return load_classifier(source, None, field)


def load_teachers(source: str | nn.Module | list[str | nn.Module]) -> nn.ModuleList:
    """One or several frozen, fine-tuned teachers."""
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    if not sources:
        raise ValueError("model.teacher: the list of teachers is empty; give at least one fine-tuned teacher")
    fields = ["model.teacher"] if len(sources) == 1 else [f"model.teacher[{i}]" for i in range(len(sources))]
    return nn.ModuleList(freeze(load_teacher(src, field)) for src, field in zip(sources, fields, strict=True))


def prepare_for_training(model: nn.Module, adapter=None, tuning=None) -> nn.Module:
    """Train mode (from_pretrained returns eval mode and Lightning keeps module modes, so dropout would be
    off), then the adapter, then selective tuning; configs may come as stored dicts."""
    model = model.train()
    if adapter is not None:
        model = attach_adapter(model, adapter)
    if tuning is not None:
        (SelectiveTuning(**tuning) if isinstance(tuning, dict) else tuning).apply(model)
    return model


def resolve_source(source: str, field: str) -> str:
    """`resolve_model_source`, with the setting ``field`` named in its error."""
    try:
        return resolve_model_source(source)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{field}: {err}") from err


def _is_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients, for a teacher."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def storable_args(**args: Any) -> dict[str, Any]:
    """Init arguments in a form that checkpoints store and ``torch.load(weights_only=True)`` reads back.

    Recipes become dicts; modules other than a plain `KDLoss` are left out (pass them again to
    ``load_from_checkpoint``).
    """
    from compress.distill.losses import KDLoss

    stored = {}
    for name, value in args.items():
        if isinstance(value, PeftConfig):
            stored[name] = peft_config_to_dict(value)
        elif is_dataclass(value) and not isinstance(value, type):  # recipes and settings
            stored[name] = asdict(value)
        elif type(value) is KDLoss:
            stored[name] = {"alpha": value.alpha, "temperature": value.temperature}
        elif isinstance(value, (list, tuple)) and any(isinstance(v, nn.Module) for v in value):
            continue  # a list of modules: pass it again to load_from_checkpoint
        elif not isinstance(value, nn.Module):
            stored[name] = value
    return stored

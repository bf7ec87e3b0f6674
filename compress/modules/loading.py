"""Turning a model source (folder, alias, module, or student recipe) into a sequence classifier or a causal
LM ready to train on the data, and the module's init arguments into what a checkpoint stores.

The task follows from the model: a causal LM (any class of transformers' causal-LM auto mapping, such as
``LlamaForCausalLM`` or ``GPT2LMHeadModel``) is trained on next tokens, anything else as a classifier.

Example:
    >>> from compress.modules.loading import load_model, storable_args, task_of
    >>> from compress.peft import StudentFromTeacher
    >>> teacher = load_model("runs/default/stages/teacher/model", num_labels=2, field="model.model")
    >>> recipe = StudentFromTeacher(layers=[0, 5])
    >>> load_model(recipe, 2, "model.student", teacher).config.num_hidden_layers, task_of(teacher)
    (2, 'classification')
    >>> stored = storable_args(student=recipe, teacher=teacher)  # a module with weights is left out
    >>> list(stored), stored["student"]["init_args"]["layers"]
    (['student'], [0, 5])
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Literal

from peft import PeftConfig, TaskType
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from compress.assets import resolve_model_source
from compress.export.prepare import CAUSAL_LM_CLASSES
from compress.peft.adapters import AdapterConfig, attach_adapter, peft_config_to_dict
from compress.peft.selective import SelectiveTuning
from compress.peft.student import StudentFromTeacher
from compress.safe_load import check_model_folder, load_pretrained
from compress.stored import to_stored

ModelSource = str | nn.Module | StudentFromTeacher
Task = Literal["classification", "causal_lm"]


def task_of(model: nn.Module | PretrainedConfig) -> Task:
    """``causal_lm`` for a causal language model (or its config, or a peft model around one), else
    ``classification``."""
    if isinstance(model, nn.Module):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        names = [type(base).__name__]
    else:
        names = model.architectures or []
    return "causal_lm" if any(name in CAUSAL_LM_CLASSES for name in names) else "classification"


def load_model(
    source: ModelSource, num_labels: int | None, field: str, teacher: PreTrainedModel | None = None
) -> nn.Module:
    """A sequence classifier, or a causal LM when ``source`` is one; ``field`` names the setting in errors."""
    if isinstance(source, nn.Module):
        return source
    if isinstance(source, StudentFromTeacher):
        if source.source is not None:
            teacher = load_model(source.source, num_labels, f"{field}.source")
        if teacher is None:
            raise ValueError(
                f"{field}: StudentFromTeacher needs `source` (a model folder or alias such as "
                "minilm-l6) when there is no distillation teacher to copy from"
            )
        return source.build(teacher)
    path = resolve_source(source, field)
    config = AutoConfig.from_pretrained(path)
    if task_of(config) == "causal_lm":
        return load_pretrained(AutoModelForCausalLM, path, field)
    if num_labels is not None and _is_classifier(config) and config.num_labels != num_labels:
        raise ValueError(
            f"{field}: {source!r} has a classifier head with {config.num_labels} labels but the "
            f"data has {num_labels}; use a model fine-tuned on this label set, or its base model"
        )
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    return load_pretrained(AutoModelForSequenceClassification, path, field, **kwargs)


def load_teacher(source: str | nn.Module, field: str = "teacher") -> nn.Module:
    """A fine-tuned teacher or a causal LM: refuses a base model whose classifier head would be random."""
    if isinstance(source, str):
        path = resolve_source(source, field)
        config = AutoConfig.from_pretrained(path)
        if not _is_classifier(config) and task_of(config) != "causal_lm":
            raise ValueError(
                f"{field}: {source!r} is neither a fine-tuned classifier nor a causal language model (its "
                f"config lists {config.architectures}); fine-tune it first with TaskModule "
                "(`compress fit --config configs/examples/finetune_teacher.yaml`) and pass the saved folder"
            )
    return load_model(source, None, field)


def load_teachers(source: str | nn.Module | list[str | nn.Module]) -> nn.ModuleList:
    """One or several frozen, fine-tuned teachers."""
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    if not sources:
        raise ValueError("model.teacher: the list of teachers is empty; give at least one fine-tuned teacher")
    fields = ["model.teacher"] if len(sources) == 1 else [f"model.teacher[{i}]" for i in range(len(sources))]
    return nn.ModuleList(freeze(load_teacher(src, field)) for src, field in zip(sources, fields, strict=True))


def prepare_for_training(
    model: nn.Module, adapter: AdapterConfig | None = None, tuning: SelectiveTuning | None = None
) -> nn.Module:
    """Train mode (from_pretrained returns eval mode and Lightning keeps module modes, so dropout would be
    off), then the adapter (for the model's task), then selective tuning."""
    model = model.train()
    if adapter is not None:
        causal = task_of(model) == "causal_lm"
        model = attach_adapter(model, adapter, TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS)
    if tuning is not None:
        tuning.apply(model)
    return model


def name_labels(model: nn.Module, datamodule) -> None:
    """The model's config learns the data's label names, so saved models and exports carry them."""
    if datamodule is None or not hasattr(datamodule, "label_names"):
        return
    model.config.id2label = dict(enumerate(datamodule.label_names))
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}


def resolve_source(source: str, field: str) -> str:
    """`resolve_model_source`, with the setting ``field`` named in its error."""
    try:
        path = resolve_model_source(source)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{field}: {err}") from err
    check_model_folder(path, field)
    return path


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
    """Init arguments as checkpoints store them: plain data, which ``torch.load(weights_only=True)`` reads.

    Settings objects and modules without weights (a loss) become ``{"class_path", "init_args"}`` dicts
    (`compress.stored`), which the modules rebuild; modules with weights (a teacher or student given as a
    module) and objects whose init arguments are not plain data are left out: pass them again to
    ``load_from_checkpoint``.
    """
    stored = {}
    for name, value in args.items():
        if _is_plain(value):
            stored[name] = value
        elif isinstance(value, PeftConfig):
            stored[name] = peft_config_to_dict(value)
        elif not _has_weights(value) and (kept := to_stored(value)) is not None:
            stored[name] = kept
    return stored


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _has_weights(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_weights(v) for v in value)
    return isinstance(value, nn.Module) and next(chain(value.parameters(), value.buffers()), None) is not None

"""One compressed base, many tasks: a peft adapter and a classification head per task, switchable.

Each task is a named peft adapter on the same frozen base, with its own head (peft's per-adapter
``modules_to_save`` copy of the classifier, resized to the task's label count). On disk: the base once,
plus one small folder per task that plain peft loads::

    base = AutoModelForSequenceClassification.from_pretrained("out/base", num_labels=5,
                                                               ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, "out/adapters/bbc_news")

Example:
    >>> from peft import LoraConfig
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from compress.peft.multitask import MultiTaskAdapters
    >>> base = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=64, vocab_size=100))
    >>> tasks = MultiTaskAdapters(base, LoraConfig(r=4, target_modules=["query", "value"]))
    >>> tasks.add_task("topics", ["business", "sport", "tech"]).config.num_labels
    3
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from peft import PeftConfig, PeftModel, TaskType, get_peft_model, set_peft_model_state_dict
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from compress.safe_load import load_pretrained

LABELS_FILE = "labels.json"


class MultiTaskAdapters:
    """Task adapters on one frozen base.

    Args:
        base: the shared model (e.g. a distilled student); its weights are never trained here.
        adapter: the peft config every task's adapter is built from (``task_type`` becomes SEQ_CLS).
    """

    def __init__(self, base: PreTrainedModel, adapter: PeftConfig) -> None:
        if not isinstance(adapter, PeftConfig):
            raise TypeError(
                f"adapter: expected a peft config such as peft.LoraConfig(r=8), got {type(adapter)}"
            )
        self.base, self.adapter = base, copy.deepcopy(adapter)
        self.adapter.task_type = TaskType.SEQ_CLS
        self.model: PeftModel | None = None
        self.labels: dict[str, list[str]] = {}

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)

    def add_task(self, name: str, label_names: list[str]) -> PeftModel:
        """Adds an adapter and a head for ``name`` and makes it the active task."""
        if name in self.labels:
            raise ValueError(f"task {name!r} exists already; tasks: {self.tasks}")
        config = copy.deepcopy(self.adapter)
        if self.model is None:
            self.model = get_peft_model(self.base, config, adapter_name=name)
        else:
            self.model.add_adapter(name, config)
        head = self._head()
        base_head = head.original_module
        if base_head.out_features != len(label_names):  # a task with its own label set gets its own head
            head.modules_to_save[name] = nn.Linear(base_head.in_features, len(label_names))
        self.labels[name] = list(label_names)
        return self.use(name)

    def use(self, name: str) -> PeftModel:
        """Switches adapter, head and the config's label names to task ``name``."""
        if name not in self.labels:
            raise ValueError(f"unknown task {name!r}; tasks: {self.tasks}")
        self.model.set_adapter(name)
        config = self.model.config
        config.num_labels = len(self.labels[name])  # sets id2label/label2id sizes too
        config.id2label = dict(enumerate(self.labels[name]))
        config.label2id = {label: i for i, label in config.id2label.items()}
        return self.model

    def save_task(self, name: str, folder: str | Path) -> Path:
        """Writes task ``name`` as a peft adapter folder (with its head) plus its label names."""
        folder = Path(folder)
        if folder.exists():
            raise ValueError(f"adapter folder {folder} exists; remove it or choose another output")
        staging = folder.with_name(f".{folder.name}.partial")  # a crash leaves no half-written folder
        shutil.rmtree(staging, ignore_errors=True)
        self.model.save_pretrained(staging, selected_adapters=[name])
        written = staging if name == "default" else staging / name  # peft nests other adapter names
        (written / LABELS_FILE).write_text(json.dumps(self.labels[name]))
        written.rename(folder)
        shutil.rmtree(staging)
        return folder

    def load_task(self, name: str, folder: str | Path) -> PeftModel:
        """Adds task ``name`` from a folder written by `save_task`."""
        folder = Path(folder)
        self.add_task(name, json.loads((folder / LABELS_FILE).read_text()))
        state = load_file(folder / "adapter_model.safetensors")
        result = set_peft_model_state_dict(self.model, state, adapter_name=name)
        if result.unexpected_keys:
            raise ValueError(
                f"adapter folder {folder} holds unexpected weights: {result.unexpected_keys[:3]}"
            )
        return self.use(name)

    @classmethod
    def from_folders(cls, base: str | Path, adapters: dict[str, str | Path]) -> MultiTaskAdapters:
        """The base folder plus task adapter folders, as written by `compress multitask`."""
        model = load_pretrained(AutoModelForSequenceClassification, base, "base")
        tasks = cls(model, PeftConfig.from_pretrained(str(next(iter(adapters.values())))))
        for name, folder in adapters.items():
            tasks.load_task(name, folder)
        return tasks

    def _head(self) -> ModulesToSaveWrapper:
        heads = [m for m in self.model.modules() if isinstance(m, ModulesToSaveWrapper)]
        if len(heads) != 1:
            raise ValueError(
                f"expected one classification head wrapped by peft, found {len(heads)}; "
                "is the base a *ForSequenceClassification model?"
            )
        return heads[0]

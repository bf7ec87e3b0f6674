"""Settings in checkpoints: each settings object round-trips through its stored form (plain data), a stored
form is rebuilt only as the type its setting expects, and a module rebuilds from its hyper-parameters."""

import json

import pytest
import torch
from peft import IA3Config, LoraConfig, PromptTuningConfig

from compress.data import TextClassificationDataModule
from compress.distill import DistillationLoss, KDLoss, TeacherCache
from compress.distill.intermediate import IntermediateDistillation
from compress.modules import DistillationModule
from compress.modules.checks import check_model_matches_data
from compress.modules.loading import name_labels
from compress.peft import BottleneckConfig, SelectiveTuning, StudentFromTeacher
from compress.peft.adapters import AdapterConfig, peft_config_to_dict
from compress.stored import from_stored, to_stored
from tests.conftest import tiny_bert

SETTINGS = {
    "student": (StudentFromTeacher(layers=[0, 2], source="minilm-l6"), StudentFromTeacher),
    "tuning": (SelectiveTuning(method="layers", layers=[-1], layerdrop=0.1), SelectiveTuning),
    "intermediate": (
        IntermediateDistillation(attention_weight=0.5, layer_map=[1, 3]),
        IntermediateDistillation,
    ),
    "teacher_cache": (TeacherCache(directory="cache", top_k=4), TeacherCache),
    "adapter": (BottleneckConfig(reduction_factor=4, placement="houlsby"), AdapterConfig),
    "loss": (KDLoss(alpha=0.2, temperature=3.0), DistillationLoss),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_settings_round_trip_through_plain_data(name):
    value, kind = SETTINGS[name]
    stored = to_stored(value)
    assert stored["class_path"].endswith("." + type(value).__name__)
    assert json.loads(json.dumps(stored)) == stored  # plain data: torch.load(weights_only=True) reads it
    rebuilt = from_stored(stored, kind, f"model.{name}")
    assert type(rebuilt) is type(value) and to_stored(rebuilt) == stored


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(r=4, target_modules=["query", "value"], use_dora=True),
        IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]),
        PromptTuningConfig(num_virtual_tokens=4),
    ],
    ids=["dora", "ia3", "prompt"],
)
def test_peft_configs_round_trip(config):
    stored = peft_config_to_dict(config)
    assert json.loads(json.dumps(stored)) == stored
    assert from_stored(stored, AdapterConfig, "model.adapter") == config


def test_a_stored_setting_is_rebuilt_only_as_the_type_of_its_setting():
    stored = to_stored(StudentFromTeacher(layers=[0]))
    with pytest.raises(ValueError, match="model.tuning: cannot rebuild the stored 'compress.peft.student"):
        from_stored(stored, SelectiveTuning, "model.tuning")
    assert from_stored("minilm-l6", StudentFromTeacher, "model.student") == "minilm-l6"  # not a stored form


def test_objects_whose_init_arguments_are_not_plain_data_are_not_stored():
    class Weighted:
        def __init__(self, weight) -> None:
            self.weight = weight

    class Hidden:
        def __init__(self, size: int) -> None:
            self._size = size

    assert to_stored(Weighted(torch.ones(2))) is None and to_stored(Hidden(3)) is None
    assert to_stored(Weighted(0.5)) == {
        "class_path": f"{__name__}.{Weighted.__qualname__}",
        "init_args": {"weight": 0.5},
    }


def test_a_module_rebuilds_from_its_hyper_parameters(tiny_teacher_dir):
    module = DistillationModule(
        teacher=tiny_teacher_dir,
        student=StudentFromTeacher(layers=[0, 2]),
        loss=KDLoss(alpha=0.1, temperature=3.0),
        tuning=SelectiveTuning(method="bias"),
        intermediate=IntermediateDistillation(hidden_loss="cosine"),
    )
    hparams = dict(module.hparams)
    for name in ("student", "loss", "tuning", "intermediate"):
        assert set(hparams[name]) == {"class_path", "init_args"}, name
    rebuilt = DistillationModule(**hparams)
    assert (rebuilt.loss.alpha, rebuilt.loss.temperature) == (0.1, 3.0)
    assert rebuilt.intermediate.settings == module.intermediate.settings
    trainable = {n for n, p in module.student.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in rebuilt.student.named_parameters() if p.requires_grad}


def test_checking_a_model_against_the_data_changes_nothing_naming_its_labels_is_a_step(tiny_data_kwargs):
    data = TextClassificationDataModule(**tiny_data_kwargs)
    model = tiny_bert(num_labels=3)
    before = model.config.to_dict()
    check_model_matches_data(model, data, "model")
    assert model.config.to_dict() == before
    name_labels(model, data)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert model.config.label2id == {"negative": 0, "neutral": 1, "positive": 2}

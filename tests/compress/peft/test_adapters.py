import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig

from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule, TaskModule
from compress.peft import StudentFromTeacher
from compress.peft.adapters import as_peft_config, attach_adapter, peft_config_to_dict
from tests.conftest import quick_trainer, tiny_bert

ADAPTERS = {
    "lora": (LoraConfig(r=4, target_modules=["query", "value"]), ("lora_",)),
    "dora": (LoraConfig(r=4, target_modules=["query", "value"], use_dora=True), ("lora_",)),
    "ia3": (
        IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]),
        ("ia3_",),
    ),
    "prefix": (PrefixTuningConfig(num_virtual_tokens=4), ("prompt_encoder",)),
    "prompt": (PromptTuningConfig(num_virtual_tokens=4), ("prompt_encoder",)),
}


def fit(module, data_kwargs, steps=3):
    trainer = quick_trainer(steps=steps)
    trainer.fit(module, datamodule=TextClassificationDataModule(**data_kwargs))
    return trainer


@pytest.mark.parametrize("name", ADAPTERS)
def test_only_adapter_and_head_train(name, tiny_data_kwargs):
    config, adapter_marks = ADAPTERS[name]
    module = TaskModule(tiny_bert(num_labels=3, layers=2), adapter=config, learning_rate=1e-2)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all(any(m in n for m in (*adapter_marks, "classifier")) for n in trainable), (
        trainable
    )
    assert any("classifier" in n for n in trainable) and any(
        any(m in n for m in adapter_marks) for n in trainable
    )
    total = sum(p.numel() for p in module.model.parameters())
    assert sum(p.numel() for n, p in module.model.named_parameters() if n in trainable) < 0.01 * total
    frozen_before = {n: p.clone() for n, p in module.model.named_parameters() if n not in trainable}
    trained_before = {n: p.clone() for n, p in module.model.named_parameters() if n in trainable}
    trainer = fit(module, tiny_data_kwargs)
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in module.model.named_parameters() if n in trainable}
    after = dict(module.model.named_parameters())
    assert all(torch.equal(p, after[n]) for n, p in frozen_before.items())
    assert any(not torch.equal(p, after[n]) for n, p in trained_before.items())


@pytest.mark.parametrize("name", ["lora", "dora", "ia3"])
def test_saved_adapter_loads_in_plain_peft_with_the_same_logits(name, tiny_data_kwargs, tmp_path):
    config, _ = ADAPTERS[name]
    module = TaskModule(tiny_bert(num_labels=3, layers=2, seed=3), adapter=config, learning_rate=1e-2)
    fit(module, tiny_data_kwargs)
    module.model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(
        tiny_bert(num_labels=3, layers=2, seed=3), tmp_path / "adapter"
    ).eval()
    ids = torch.randint(0, 1000, (3, 8))
    module.model.eval()
    with torch.no_grad():
        assert torch.allclose(module.model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-6)


def test_distillation_student_with_lora_checkpoint_round_trip(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    module = DistillationModule(
        teacher=tiny_teacher_dir,
        student=StudentFromTeacher(layers=[0, 2]),
        adapter=LoraConfig(r=4, target_modules=["query", "value"]),
        learning_rate=1e-2,
    )
    assert isinstance(module.student, PeftModel)
    trainer = quick_trainer(tmp_path, steps=2)
    trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    loaded = DistillationModule.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert isinstance(loaded.student, PeftModel) and loaded.student.peft_config["default"].r == 4
    for key, value in module.student.state_dict().items():
        assert torch.equal(value, loaded.student.state_dict()[key]), key


def test_config_dict_round_trip_and_bad_inputs():
    config = LoraConfig(r=4, target_modules=["query", "value"], use_dora=True)
    stored = peft_config_to_dict(config)
    restored = as_peft_config(stored)
    assert (
        isinstance(restored, LoraConfig)
        and restored.use_dora
        and set(restored.target_modules) == {"query", "value"}
    )
    with pytest.raises(TypeError, match="peft.PeftConfig"):
        as_peft_config({"r": 4})
    with pytest.raises(ValueError, match="adapter.task_type"):
        attach_adapter(tiny_bert(), LoraConfig(r=4, target_modules=["query"], task_type="CAUSAL_LM"))


def test_bottleneck_adapter_in_a_distillation_student_and_its_checkpoint(
    tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    from compress.peft.bottleneck import BottleneckConfig, bottleneck_adapters

    module = DistillationModule(
        teacher=tiny_teacher_dir,
        student=StudentFromTeacher(layers=[0, 2]),
        adapter=BottleneckConfig(reduction_factor=4, placement="houlsby"),
        learning_rate=1e-2,
    )
    assert len(bottleneck_adapters(module.student)) == 4
    trainer = quick_trainer(tmp_path, steps=2)
    trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    trainable = {n for n, p in module.student.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n or n.startswith("classifier.") for n in trainable)
    loaded = DistillationModule.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert loaded.student.bottleneck_config == module.student.bottleneck_config
    for key, value in module.student.state_dict().items():
        assert torch.equal(value, loaded.student.state_dict()[key]), key


def test_adapter_from_yaml_parses(capsys):
    from compress.commands import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/examples/distill_lora.yaml", "--print_config"])
    assert "class_path: peft.LoraConfig" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/examples/distill_bottleneck.yaml", "--print_config"])
    assert "placement: houlsby" in capsys.readouterr().out

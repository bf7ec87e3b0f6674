import pytest
import torch
from lightning.pytorch import Trainer

from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule, TaskModule
from compress.peft import StudentFromTeacher
from compress.peft.layerdrop import has_layerdrop
from compress.peft.selective import SelectiveTuning
from tests.conftest import quick_trainer, tiny_bert


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("tuning", "allowed"),
    [
        (SelectiveTuning(method="layers", layers=[-1]), ("bert.encoder.layer.3.", "classifier.")),
        (SelectiveTuning(method="attention"), (".attention.", "classifier.")),
        (SelectiveTuning(method="bias"), ("bias",)),
    ],
    ids=["layers", "attention", "bias"],
)
def test_methods_restrict_the_trainable_weights(tuning, allowed):
    model = TaskModule(tiny_bert(num_labels=3), tuning=tuning).model
    names = trainable(model)
    assert names and all(any(a in n for a in allowed) or n.startswith("classifier.") for n in names)
    assert len(names) < len(list(model.parameters()))


def test_subnetwork_trains_only_the_selected_entries(tiny_data_kwargs):
    module = TaskModule(
        tiny_bert(num_labels=3, layers=2),
        weight_decay=0.0,
        learning_rate=1e-2,
        tuning=SelectiveTuning(method="subnetwork", subnetwork_fraction=0.25),
    )
    weight = module.model.bert.encoder.layer[0].intermediate.dense.weight
    before = weight.detach().clone()
    Trainer(
        max_steps=3, logger=False, enable_progress_bar=False, enable_checkpointing=False, limit_val_batches=0
    ).fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    changed = weight.detach() != before
    kept = before.abs() >= before.abs().flatten().kthvalue(round(0.75 * before.numel())).values
    assert changed.any() and not (changed & ~kept).any()  # only the largest-magnitude quarter moved
    assert 0.2 < changed.float().mean() <= 0.26


def test_tuning_in_a_distillation_student_with_layerdrop_and_checkpoint(
    tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    tuning = SelectiveTuning(method="layers", layers=[1], layerdrop=0.2)
    module = DistillationModule(
        teacher=tiny_teacher_dir, student=StudentFromTeacher(layers=[0, 2]), tuning=tuning
    )
    assert has_layerdrop(module.student)
    assert {n.split(".")[3] for n in trainable(module.student) if n.startswith("bert.")} == {"1"}
    trainer = quick_trainer(tmp_path, steps=2)
    trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    loaded = DistillationModule.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert trainable(loaded.student) == trainable(module.student) and has_layerdrop(loaded.student)
    module.student.eval(), loaded.student.eval()
    ids = torch.randint(0, 1000, (2, 6))
    assert torch.equal(module.student(input_ids=ids).logits, loaded.student(input_ids=ids).logits)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "everything"}, "method"),
        ({"method": "layers"}, "layers"),
        ({"subnetwork_fraction": 0.0}, "subnetwork_fraction"),
        ({"layerdrop": 1.0}, "layerdrop"),
    ],
)
def test_bad_settings(kwargs, field):
    with pytest.raises(ValueError, match=f"SelectiveTuning.{field}"):
        SelectiveTuning(**kwargs)

import pytest
import torch
from transformers import AutoTokenizer

from compress.data import TextClassificationDataModule
from compress.distill.intermediate import IntermediateDistillation
from compress.distill.multi_teacher import average_teacher_logits, normalized_weights
from compress.modules import DistillationModule
from compress.peft import StudentFromTeacher
from tests.conftest import quick_trainer, tiny_bert


def test_mixture_softmax_is_the_weighted_mean_of_teacher_softmaxes():
    torch.manual_seed(0)
    logits = [torch.randn(5, 4) * 3 for _ in range(3)]
    weights = normalized_weights([1.0, 2.0, 1.0], 3)
    for temperature in (1.0, 2.0, 4.0):
        mixed = average_teacher_logits(logits, weights, temperature)
        expected = sum(w * (z / temperature).softmax(-1) for w, z in zip(weights, logits, strict=True))
        assert torch.allclose((mixed / temperature).softmax(-1), expected, atol=1e-6)


def test_single_teacher_passes_through_and_weights_normalise():
    z = torch.randn(2, 3)
    assert average_teacher_logits([z], [1.0], 2.0) is z
    assert normalized_weights(None, 4) == [0.25] * 4
    assert normalized_weights([2.0, 6.0], 2) == [0.25, 0.75]
    for bad in ([1.0], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="model.teacher_weights"):
            normalized_weights(bad, 2)


@pytest.fixture(scope="module")
def second_teacher_dir(tmp_path_factory, tokenizer_dir):
    folder = tmp_path_factory.mktemp("second_teacher")
    tiny_bert(num_labels=3, layers=2, seed=5).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return str(folder)


def test_two_teachers_train_a_student_and_stay_out_of_checkpoints(
    tiny_teacher_dir, second_teacher_dir, tiny_data_kwargs, tmp_path
):
    module = DistillationModule(
        teacher=[tiny_teacher_dir, second_teacher_dir],
        teacher_weights=[3.0, 1.0],
        student=StudentFromTeacher(layers=[0, 2]),
        learning_rate=1e-3,
    )
    assert len(module.teachers) == 2 and module.teacher_weights == [0.75, 0.25]
    data = TextClassificationDataModule(**tiny_data_kwargs)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    expected = average_teacher_logits(
        [
            t(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
            ).logits
            for t in module.teachers
        ],
        [0.75, 0.25],
        module.loss.temperature,
    )
    assert torch.allclose(module.teacher_logits(batch), expected)
    trainer = quick_trainer(tmp_path, steps=2)
    trainer.fit(module, datamodule=data)
    assert all(not t.training for t in module.teachers)
    path = trainer.checkpoint_callback.best_model_path
    assert {k.split(".")[0] for k in torch.load(path, weights_only=True)["state_dict"]} == {"student"}
    loaded = DistillationModule.load_from_checkpoint(path)
    assert len(loaded.teachers) == 2 and loaded.teacher_weights == [0.75, 0.25]


def test_multi_teacher_errors(tiny_teacher_dir, second_teacher_dir):
    with pytest.raises(ValueError, match="model.intermediate: layer matching takes a single teacher"):
        DistillationModule(
            teacher=[tiny_teacher_dir, second_teacher_dir], intermediate=IntermediateDistillation()
        )
    with pytest.raises(ValueError, match="model.teacher: the list of teachers is empty"):
        DistillationModule(teacher=[])
    with pytest.raises(ValueError, match="the student has 2 labels, the teacher 3"):
        DistillationModule(teacher=[tiny_teacher_dir, second_teacher_dir], student=tiny_bert(num_labels=2))

import pytest
import torch

from compress.peft import StudentFromTeacher, layer_container
from tests.conftest import tiny_bert


def test_selected_layers_are_copied_in_order():
    teacher = tiny_bert(num_labels=3, layers=6).eval()
    student = StudentFromTeacher(layers=[0, 2, 4]).build(teacher)
    assert student.config.num_hidden_layers == 3 and len(student.bert.encoder.layer) == 3
    for s_idx, t_idx in enumerate([0, 2, 4]):
        s_layer, t_layer = student.bert.encoder.layer[s_idx], teacher.bert.encoder.layer[t_idx]
        for (name, p_s), (_, p_t) in zip(s_layer.named_parameters(), t_layer.named_parameters(), strict=True):
            assert torch.equal(p_s, p_t), name
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    student.bert.encoder.layer[0].output.dense.weight.data.add_(1.0)  # a copy, not shared storage
    assert not torch.equal(
        student.bert.encoder.layer[0].output.dense.weight, teacher.bert.encoder.layer[0].output.dense.weight
    )


def test_all_layers_reproduce_the_teacher():
    teacher = tiny_bert(layers=4).eval()
    student = StudentFromTeacher(layers=[0, 1, 2, 3]).build(teacher).eval()
    ids = torch.randint(0, 1000, (3, 9))
    assert torch.allclose(student(ids).logits, teacher(ids).logits, atol=1e-6)


@pytest.mark.parametrize(
    ("k", "depth", "expected"), [(3, 6, [1, 3, 5]), (2, 6, [2, 5]), (1, 4, [3]), (4, 4, [0, 1, 2, 3])]
)
def test_num_hidden_layers_spreads_uniformly(k, depth, expected):
    assert StudentFromTeacher(num_hidden_layers=k).teacher_layers(depth) == expected


def test_random_layers_keep_embeddings_only():
    teacher = tiny_bert(layers=4)
    student = StudentFromTeacher(num_hidden_layers=2, copy_layer_weights=False).build(teacher)
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )
    assert not torch.equal(
        student.bert.encoder.layer[1].output.dense.weight, teacher.bert.encoder.layer[3].output.dense.weight
    )


def test_layer_container_is_found():
    assert layer_container(tiny_bert(layers=3)) == "bert.encoder.layer"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"layers": [0, 1], "num_hidden_layers": 2}, "exactly one"),
        ({"layers": [1, 1]}, "distinct"),
        ({"num_hidden_layers": 0}, ">= 1"),
    ],
)
def test_bad_recipes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StudentFromTeacher(**kwargs)


def test_layers_outside_the_teacher():
    with pytest.raises(ValueError, match=r"\[7\] outside the teacher's 4 layers"):
        StudentFromTeacher(layers=[0, 7]).build(tiny_bert(layers=4))
    with pytest.raises(ValueError, match="exceeds the teacher's 4"):
        StudentFromTeacher(num_hidden_layers=5).build(tiny_bert(layers=4))

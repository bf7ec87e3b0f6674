import pytest
import torch
from lightning.pytorch import Trainer
from transformers import BertConfig, BertForSequenceClassification

from compress.data import TextClassificationDataModule
from compress.distill.intermediate import IntermediateDistillation, uniform_layer_map
from compress.modules import DistillationModule
from tests.conftest import quick_trainer


def states(layers, width=8, batch=2, length=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, length, width, generator=generator) for _ in range(layers + 1))


def maps(layers, heads=2, batch=2, length=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, heads, length, length, generator=generator).softmax(-1) for _ in range(layers)
    )


@pytest.mark.parametrize(
    ("s", "t", "expected"), [(3, 6, [1, 3, 5]), (2, 4, [1, 3]), (4, 4, [0, 1, 2, 3]), (1, 6, [5])]
)
def test_uniform_layer_map(s, t, expected):
    assert uniform_layer_map(s, t) == expected


@pytest.mark.parametrize("hidden_loss", ["mse", "cosine"])
def test_hidden_loss_is_zero_for_matching_layers_and_positive_otherwise(hidden_loss):
    teacher = states(4)
    matching = IntermediateDistillation(hidden_loss=hidden_loss).build(2, 4, 8, 8)
    student = (teacher[0], teacher[2], teacher[4])  # the uniformly mapped teacher layers 1 and 3
    assert float(matching(student, teacher)["hidden"]) == pytest.approx(0.0, abs=1e-6)
    assert float(matching(states(2, seed=1), teacher)["hidden"]) > 0.1


def test_padding_positions_do_not_count():
    teacher, student = states(2), states(2, seed=1)
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    matching = IntermediateDistillation(hidden_weight=1.0, attention_weight=1.0).build(2, 2, 8, 8)
    base = matching(student, teacher, mask, maps(2), maps(2, seed=2))["loss"]
    changed = tuple(s.clone() for s in student)
    changed[2][1, 4] += 100.0
    assert torch.equal(base, matching(changed, teacher, mask, maps(2), maps(2, seed=2))["loss"])


def test_attention_kl_zero_for_equal_maps_and_works_across_head_counts():
    matching = IntermediateDistillation(hidden_weight=0.0, attention_weight=1.0).build(2, 2, 8, 8)
    equal = matching(states(2), states(2), None, maps(2), maps(2))["attention"]
    assert float(equal) == pytest.approx(0.0, abs=1e-6)
    different = matching(states(2), states(2), None, maps(2, heads=1, seed=3), maps(2, heads=4))["attention"]
    assert float(different) > 0


def test_width_projection_is_learned_when_widths_differ():
    matching = IntermediateDistillation().build(2, 4, 8, 16)
    assert len(matching.projections) == 2 and all(p.requires_grad for p in matching.parameters())
    loss = matching(states(2, width=8), states(4, width=16))["loss"]
    loss.backward()
    assert matching.projections[0].weight.grad is not None
    assert len(IntermediateDistillation().build(2, 4, 16, 16).projections) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_weight": 0.0}, "both 0"),
        ({"hidden_weight": -1.0}, "hidden_weight"),
        ({"hidden_loss": "l1"}, "hidden_loss"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IntermediateDistillation(**kwargs)


def test_bad_layer_map():
    with pytest.raises(ValueError, match="layer_map"):
        IntermediateDistillation(layer_map=[0, 9]).build(2, 4, 8, 8)


def narrow_student():
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=32,
        max_position_embeddings=128,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


def test_distillation_with_intermediate_matching(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    settings = IntermediateDistillation(hidden_weight=1.0, attention_weight=0.5, hidden_loss="mse")
    module = DistillationModule(
        teacher=tiny_teacher_dir, student=narrow_student(), intermediate=settings, learning_rate=1e-3
    )
    assert module.intermediate.layer_map == [1, 3] and len(module.intermediate.projections) == 2
    trainer = quick_trainer(tmp_path, steps=3)
    projection_before = module.intermediate.projections[0].weight.clone()
    trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(p) for p in module.intermediate.parameters()} <= optimized
    assert not torch.equal(projection_before, module.intermediate.projections[0].weight)
    logged = trainer.logged_metrics
    assert float(logged["train/hidden"]) > 0 and float(logged["train/attention"]) > 0
    loaded = DistillationModule.load_from_checkpoint(
        trainer.checkpoint_callback.best_model_path, student=narrow_student()
    )
    assert loaded.intermediate.settings == settings
    assert torch.equal(loaded.intermediate.projections[0].weight, module.intermediate.projections[0].weight)


def test_intermediate_needs_shared_tokenization(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "film"]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "tok")
    module = DistillationModule(
        teacher=tiny_teacher_dir, student=narrow_student(), intermediate=IntermediateDistillation()
    )
    data = TextClassificationDataModule(**tiny_data_kwargs, teacher_tokenizer=str(tmp_path / "tok"))
    with pytest.raises(ValueError, match="model.intermediate: layer matching needs the same token positions"):
        Trainer(max_steps=1, logger=False, enable_progress_bar=False).fit(module, datamodule=data)

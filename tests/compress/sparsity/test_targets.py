"""The target resolver decides by structure: teachers under any name, output layers of any network."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from compress.callbacks import MagnitudePruning
from compress.sparsity import register_teacher, select_targets, trained_model
from compress.sparsity.roles import output_layer_names, teacher_names
from compress.sparsity.targets import resolve_targets
from tests.conftest import quick_trainer, tiny_bert


class CNN(nn.Module):
    """The issue's CNN: its output layer is called ``out``, which no name rule knew."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)
        self.hidden, self.out = nn.Linear(8, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.out(torch.relu(self.hidden(x.mean((2, 3)))))


class Untraceable(CNN):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return super().forward(x)


class Holder(LightningModule):
    def __init__(self, net: nn.Module, **others: nn.Module) -> None:
        super().__init__()
        self.net = net
        for name, module in others.items():
            setattr(self, name, module)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_cnn_output_layer_is_found_by_tracing_whatever_its_name():
    assert sorted(select_targets(CNN())) == ["conv1", "conv2", "hidden"]
    assert sorted(select_targets(Holder(CNN()))) == ["net.conv1", "net.conv2", "net.hidden"]


def test_an_untraceable_network_keeps_its_last_layer():
    assert sorted(select_targets(Holder(Untraceable()))) == ["net.conv1", "net.conv2", "net.hidden"]


def test_a_frozen_network_beside_the_trained_one_is_a_teacher_under_any_name():
    teacher = CNN().requires_grad_(False)
    holder = Holder(CNN(), big_model=teacher)
    assert teacher_names(holder) == ["big_model"]
    assert not any(name.startswith("big_model") for name in select_targets(holder))
    assert trained_model(holder) is holder.net


def test_registered_and_frozen_hf_teachers_are_teachers_even_inside_a_container():
    holder = Holder(CNN(), models=nn.ModuleDict({"t": tiny_bert(layers=1).requires_grad_(False)}))
    holder.other = register_teacher(CNN())  # trainable, but registered (what Distillation does)
    assert sorted(teacher_names(holder)) == ["models", "other"]  # the outermost frozen part


def test_frozen_parts_of_the_trained_model_stay_targets():
    """LoRA's frozen base layers, layers GradualUnfreezing has not reached, an eval-mode from_pretrained."""
    student = tiny_bert(layers=2).eval()
    student.bert.encoder.layer[0].requires_grad_(False)
    holder = Holder(student)
    targets = select_targets(holder)
    assert "net.bert.encoder.layer.0.intermediate.dense" in targets
    assert "net.classifier" not in targets and teacher_names(holder) == []


def test_lora_adapters_and_saved_head_copies_are_skipped_but_base_layers_kept():
    config = LoraConfig(r=2, target_modules=["query"], modules_to_save=["classifier"], task_type="SEQ_CLS")
    targets = select_targets(get_peft_model(tiny_bert(layers=1), config))
    assert any(name.endswith("query.base_layer") for name in targets)
    assert not any("lora_" in name or "classifier" in name for name in targets)


def test_hf_heads_by_structure():
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    )  # fmt: skip
    assert output_layer_names(llama) == {"lm_head"}
    assert output_layer_names(tiny_bert(layers=1)) == {"classifier"}


def test_explicit_targets_may_name_the_head_but_not_the_teacher():
    holder = Holder(CNN(), big_model=CNN().requires_grad_(False))
    assert sorted(select_targets(holder, targets=[r"^net\.out$"])) == ["net.out"]
    with pytest.raises(ValueError, match=r"T.targets: \['out'\] selects 'big_model.out', inside 'big_model'"):
        select_targets(holder, targets=["out"], owner="T.targets")
    with pytest.raises(
        ValueError, match=r"MagnitudePruning.targets: \['nope'\] matches no Linear/Conv layer"
    ):
        resolve_targets(holder, ["nope"], None, None, "MagnitudePruning")


def test_nothing_left_says_what_was_found():
    holder = Holder(nn.Linear(4, 2))
    with pytest.raises(
        ValueError, match=r"found 1 Linear/Conv layers; teacher: none; output layers: \['net'\]"
    ):
        resolve_targets(holder, None, None, None, "L1Sparsity")


def test_magnitude_pruning_leaves_a_frozen_teacher_and_the_output_layer_whole():
    """The issue's two cases end to end: 45% of a ``self.big_model`` teacher zeroed; ``out`` pruned 40-80%."""
    torch.manual_seed(0)
    teacher = CNN().requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = Holder(CNN(), big_model=teacher)
    data = torch.utils.data.TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    pruning = MagnitudePruning(target_sparsity=0.6, end_step=2, frequency=1)
    quick_trainer(steps=3, callbacks=[pruning]).fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert int((module.net.out.weight == 0).sum()) == 0
    assert pruning.sparsity == pytest.approx(0.6, abs=1e-2)


def test_frozen_is_no_sign_inside_a_model_frozen_as_a_whole_or_inside_a_trained_classifier():
    """A merged, all-frozen model is still pruned as itself; a frozen ``bert`` under a training head is part
    of the classifier (head-only fine-tuning), not a teacher."""
    frozen = tiny_bert(layers=1).requires_grad_(False)
    assert "bert.encoder.layer.0.intermediate.dense" in select_targets(frozen)
    head_only = tiny_bert(layers=1)
    head_only.bert.requires_grad_(False)
    assert teacher_names(Holder(head_only)) == []
    assert "net.bert.encoder.layer.0.intermediate.dense" in select_targets(Holder(head_only))

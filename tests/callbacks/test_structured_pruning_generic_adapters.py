"""The generic layout of `StructuredPruning` with peft's LoRA on a user's network (merged, restarted, shrunk
with its base layers; exact resume) and with ``taylor`` importance, which ranks channels by the gradients of
the training loss in the step a round is due at."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from lightning.pytorch import Callback
from peft import LoraConfig, get_peft_model

from compress.callbacks.structured_pruning import StructuredPruning
from compress.sparsity.structured.channels import example_inputs, traced_graph
from compress.sparsity.structured.channels.groups import channel_groups
from compress.sparsity.structured.channels.history import replay_channel_history
from compress.sparsity.structured.tracing import traceable
from tests.callbacks.test_structured_pruning_generic import CNN, fit, images, resumed_equals_uninterrupted

PEFT_PREFIX = "base_model.model."


class LoraCNN(CNN):
    """The user's CNN with LoRA on its two Linear layers (random B: the adapters hold an update)."""

    def __init__(self, seed: int = 0, learning_rate: float = 0.05) -> None:
        super().__init__(seed, learning_rate)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["fc", "out"], init_lora_weights=False)
        self.net = get_peft_model(self.net, config)


class AfterRound(Callback):
    """The network at the start of the first training batch, after the round (placed after the pruner)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.net = copy.deepcopy(pl_module.net)


def plain_history(history: list[dict]) -> list[dict]:
    """A LoRA run's history as it applies to the merged, unwrapped network: base layers by their own names,
    no adapter entries."""

    def rename(modules: dict) -> dict:
        return {
            name.removeprefix(PEFT_PREFIX).removesuffix(".base_layer"): idxs
            for name, idxs in modules.items()
            if ".lora_" not in name
        }

    return [{**e, **{kind: rename(e[kind]) for kind in ("out_channels", "in_channels")}} for e in history]


def test_lora_is_merged_restarted_and_shrinks_with_its_base_layers():
    module, after = LoraCNN(), AfterRound()
    merged = copy.deepcopy(module.net).merge_and_unload()  # the function the model computes before the round
    pruning = StructuredPruning(channel_ratio=0.5, at_step=0)
    trainer = fit(module, [pruning, after], max_steps=2)
    fc, out = (after.net.base_model.model.get_submodule(n) for n in ("fc", "out"))
    assert fc.base_layer.weight.shape == (16, 8) and fc.lora_A["default"].weight.shape == (4, 8)
    assert fc.lora_B["default"].weight.shape == (16, 4) and (fc.in_features, fc.out_features) == (8, 16)
    assert out.base_layer.weight.shape == (10, 16) and out.lora_A["default"].weight.shape == (4, 16)
    assert all(not layer.lora_B["default"].weight.any() for layer in (fc, out))  # restarted from zero
    reference = replay_channel_history(merged, plain_history(pruning.history))
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(after.net(x), reference(x))  # merged, then the same channels removed
    trained = module.net.base_model.model
    assert not trained.fc.base_layer.weight.requires_grad
    assert trained.fc.lora_A["default"].weight.requires_grad
    assert trained.fc.lora_B["default"].weight.any()  # the adapters go on training
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in module.parameters() if p.requires_grad} <= held


def test_lora_resume_matches_an_uninterrupted_run(tmp_path):
    resumed_equals_uninterrupted(tmp_path, LoraCNN)


def test_taylor_resume_matches_an_uninterrupted_run(tmp_path):
    resumed_equals_uninterrupted(tmp_path, CNN, importance="taylor")


def removed_by(importance: str, module: CNN, batch) -> list[int]:
    """The fc units torch-pruning's scorer removes at 50%, with the gradients of the user's loss on batch."""
    net = copy.deepcopy(module.net)
    module.loss(net(batch[0]), batch[1]).backward()
    scorer = {"taylor": "GroupTaylorImportance", "magnitude": "GroupMagnitudeImportance"}[importance]
    with traceable(net):
        traced = traced_graph(net, example_inputs(net, batch))
        (group,) = [g.group for g in channel_groups(net, traced) if g.root == "fc"]
        scores = getattr(tp.importance, scorer)()(group)
    return sorted(torch.argsort(scores, stable=True)[:16].tolist())


def test_taylor_ranks_by_the_gradients_of_the_step_it_prunes_in():
    module = CNN()
    initial = module.net.fc.weight.detach().clone()
    first = next(iter(images()))
    expected = removed_by("taylor", module, first)
    assert expected != removed_by("magnitude", module, first)  # the two rankings differ here
    pruning = StructuredPruning(channel_ratio=0.5, importance="taylor", at_step=0)
    fit(module, [pruning], max_steps=1)
    removed = {e["layer"]: e["out_channels"][e["layer"]] for e in pruning.history}
    assert sorted(removed["fc"]) == expected
    kept_out, kept_in = ([i for i in range(n) if i not in removed[k]] for k, n in (("fc", 32), ("conv2", 16)))
    pruned_start = initial[kept_out][:, kept_in]
    assert module.net.fc.weight.shape == pruned_start.shape
    assert not torch.equal(module.net.fc.weight, pruned_start)  # the step updated the pruned weights


def test_taylor_names_the_layers_without_gradients():
    module = CNN()
    module.net.out.requires_grad_(False)  # it shares fc's units: its weights count zero in their ranking
    with pytest.warns(UserWarning, match=r"importance='taylor': out had no gradient .* count zero"):
        fit(module, [StructuredPruning(channel_ratio=0.5, importance="taylor", at_step=1)], max_steps=2)
    assert module.net.out.weight.grad is None and module.net.out.in_features == 16
    assert not module.net.out.weight.requires_grad


def test_taylor_under_lora_is_refused_before_training():
    module = LoraCNN()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(ValueError, match=r"StructuredPruning.importance: 'taylor' .* base weight is frozen"):
        fit(module, [StructuredPruning(channel_ratio=0.5, importance="taylor")], max_steps=1)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())

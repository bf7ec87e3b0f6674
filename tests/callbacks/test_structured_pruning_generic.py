"""`StructuredPruning` beyond BERT: the generic layout on a user's own CNN LightningModule (channels halved,
the output layer kept, rounds, exact resume, `load_pruned_checkpoint`), a Llama-family decoder under an
arbitrary attribute of a user's module, and the refusals, each naming what was looked for and found."""

from __future__ import annotations

import json
from collections import OrderedDict

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.callbacks.structured_pruning import StructuredPruning, load_pruned_checkpoint
from compress.modules import TaskModule
from compress.sparsity.structured import find_prunable_model
from compress.sparsity.structured.channels import example_inputs, traced_graph
from compress.sparsity.structured.channels.groups import kept_reason
from compress.sparsity.structured.tracing import traceable
from tests.callbacks.test_structured_pruning import student as tiny_bert
from tests.callbacks.test_structured_pruning_llama import llama
from tests.compress.modules.causal_lm_models import batches as token_batches
from tests.compress.modules.test_distillation import StopAfterEpochs


def net() -> nn.Sequential:
    layers = OrderedDict(
        conv1=nn.Conv2d(1, 8, 3), relu1=nn.ReLU(), conv2=nn.Conv2d(8, 16, 3), relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 32), relu3=nn.ReLU(),
        out=nn.Linear(32, 10),
    )  # fmt: skip
    return nn.Sequential(layers)


class CNN(pl.LightningModule):
    """A user's own LightningModule: a CNN under ``net``, a loss module beside it."""

    def __init__(self, seed: int = 0, learning_rate: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.net, self.loss = net(), nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return self.loss(self.net(images), labels)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


class UserLM(pl.LightningModule):
    """A user's own LightningModule holding a tiny Llama under an attribute of its own choosing."""

    def __init__(self, **overrides) -> None:
        super().__init__()
        self.lm = llama(**overrides)

    def training_step(self, batch, batch_idx):
        return self.lm(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def images(rows: int = 32, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(rows, 1, 8, 8, generator=generator), torch.randint(0, 10, (rows,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def fit(module, callbacks, loader=None, root=None, ckpt_path=None, **kwargs) -> Trainer:
    settings = dict(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        accelerator="cpu", limit_val_batches=0, num_sanity_val_steps=0, deterministic=True,
        default_root_dir=root,
    )  # fmt: skip
    trainer = Trainer(**{**settings, **kwargs}, callbacks=callbacks)
    trainer.fit(module, loader or images(), ckpt_path=ckpt_path)
    return trainer


def widths(model: nn.Sequential) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(model.get_submodule(name).weight.shape[:2]) for name in ("conv1", "conv2", "fc", "out")
    }


class Recorder(Callback):
    """Per training batch, after any pruning: the CNN's widths, whether the optimizer holds exactly its
    parameters, and its weights."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        held = [id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]]
        self.rows.append(
            {
                **widths(pl_module.net),
                "optimizer_holds_model": sorted(held) == sorted(id(p) for p in pl_module.parameters()),
                "weights": {k: v.clone() for k, v in pl_module.state_dict().items()},
            }
        )


def test_half_the_channels_go_the_output_layer_stays_and_training_goes_on():
    module, recorder = CNN(), Recorder()
    pruning = StructuredPruning(channel_ratio=0.5, at_step=1)
    fit(module, [pruning, recorder], max_steps=3)
    dense = {"conv1": (8, 1), "conv2": (16, 8), "fc": (32, 16), "out": (10, 32)}
    pruned = {"conv1": (4, 1), "conv2": (8, 4), "fc": (16, 8), "out": (10, 16)}
    assert [{k: r[k] for k in dense} for r in recorder.rows] == [dense, pruned, pruned]
    assert all(r["optimizer_holds_model"] for r in recorder.rows)
    after_round, final = recorder.rows[1]["weights"], module.state_dict()
    assert all(not torch.equal(after_round[k], final[k]) for k in ("net.conv1.weight", "net.out.weight"))
    assert module.net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert [entry["layer"] for entry in pruning.history] == ["fc", "conv2", "conv1"]
    fc = next(entry for entry in pruning.history if entry["layer"] == "fc")
    assert len(fc["out_channels"]["fc"]) == 16 and fc["in_channels"]["out"] == fc["out_channels"]["fc"]
    state = pruning.state_dict()
    assert json.loads(json.dumps(state)) == state


def test_the_channels_with_the_lowest_group_magnitude_go():
    module, pruning = CNN(), StructuredPruning(channel_ratio=0.5)
    # torch-pruning's GroupMagnitudeImportance(p=2): a unit's squared weights in fc and in out's input column
    score = module.net.fc.weight.detach().square().sum(1) + module.net.out.weight.detach().square().sum(0)
    fit(module, [pruning], max_steps=1)
    (entry,) = [e for e in pruning.history if e["layer"] == "fc"]
    assert sorted(entry["out_channels"]["fc"]) == sorted(score.argsort()[:16].tolist())
    assert module.net.structured_pruning_history == pruning.history  # the network's own record


def test_rounds_reach_the_target_at_the_last_step():
    module, recorder = CNN(), Recorder()
    pruning = StructuredPruning(channel_ratio=0.5, steps=[1, 3])
    fit(module, [pruning, recorder], max_steps=5)
    assert [r["conv1"][0] for r in recorder.rows] == [8, 6, 6, 4, 4]  # floor(0.25 * 8), then floor(0.5 * 8)
    assert [r["fc"] for r in recorder.rows] == [(32, 16), (24, 12), (24, 12), (16, 8), (16, 8)]
    assert [r["out"] for r in recorder.rows] == [(10, 32), (10, 24), (10, 24), (10, 16), (10, 16)]
    assert [entry["round"] for entry in pruning.history] == [1, 1, 1, 2, 2, 2]
    assert all(r["optimizer_holds_model"] for r in recorder.rows)


def resumed_equals_uninterrupted(tmp_path, make=CNN, **settings) -> nn.Module:
    """Rounds at steps 3 and 9 over 4 epochs of 4 steps: a run stopped after epoch 2 (one round done) and
    resumed ends bit-identical to an uninterrupted one, with the same history; returns the resumed module."""

    def run(root, ckpt_path=None, callbacks=()):
        seed_everything(7)
        module = make()
        pruning = StructuredPruning(channel_ratio=0.5, steps=[3, 9], **settings)
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        trainer = fit(
            module, [pruning, checkpoint, *callbacks], None, root, ckpt_path, max_epochs=4,
            enable_checkpointing=True,
        )  # fmt: skip
        return module, pruning, trainer

    straight, straight_pruning, _ = run(tmp_path / "a")
    _, stopped, stopped_trainer = run(tmp_path / "b", callbacks=[StopAfterEpochs(2)])
    assert stopped_trainer.global_step == 8 and stopped.rounds_done == 1  # the second round after resume
    seed_everything(123)  # the resumed run must not depend on the process's RNG at resume time
    resumed, resumed_pruning, trainer = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert trainer.global_step == 16 and resumed_pruning.history == straight_pruning.history
    assert resumed_pruning.rounds_done == 2
    expected = straight.state_dict()
    assert resumed.state_dict().keys() == expected.keys()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key
    return resumed


def test_resume_matches_an_uninterrupted_run(tmp_path):
    assert widths(resumed_equals_uninterrupted(tmp_path).net)["fc"] == (16, 8)


def test_load_pruned_checkpoint_rebuilds_the_cnn(tmp_path):
    module = CNN()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    fit(
        module,
        [StructuredPruning(channel_ratio=0.5, at_step=1), checkpoint],
        max_steps=2,
        enable_checkpointing=True,
    )
    path = str(tmp_path / "last.ckpt")
    with pytest.raises(RuntimeError, match="size mismatch"):
        CNN.load_from_checkpoint(path)
    loaded = load_pruned_checkpoint(CNN, path, seed=3)
    assert type(loaded) is CNN and widths(loaded.net) == widths(module.net)
    for key, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loaded.net(x), module.net(x))


@pytest.mark.parametrize(
    "settings, config, expected",
    [(dict(ffn_ratio=0.5), "intermediate_size", 32), (dict(head_ratio=0.5), "num_key_value_heads", 2)],
    ids=["ffn", "heads"],
)
def test_a_llama_under_any_attribute_of_a_user_module_is_pruned(settings, config, expected):
    module = UserLM()
    fit(module, [StructuredPruning(**settings)], token_batches(rows=8), max_steps=2)
    assert getattr(module.lm.config, config) == expected


def test_a_single_key_value_group_says_how_heads_can_go():
    with pytest.raises(ValueError) as caught:
        fit(
            UserLM(num_key_value_heads=1),
            [StructuredPruning(head_ratio=0.5)],
            token_batches(rows=8),
            max_steps=1,
        )
    message = str(caught.value)
    assert "remove nothing from 1 key/value groups of 6 query heads" in message
    assert "LlamaForCausalLM, a Llama-family decoder" in message and "head_unit='heads'" in message
    module = UserLM(num_key_value_heads=1)
    fit(module, [StructuredPruning(head_ratio=0.5, head_unit="heads")], token_batches(rows=8), max_steps=1)
    assert module.lm.config.num_attention_heads == 3


class Empty(pl.LightningModule):
    """No Conv/Linear layer at all: a scale on the images."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return (self.scale * batch[0]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "make, pruning, message",
    [
        (
            lambda: TaskModule(tiny_bert()),
            StructuredPruning(channel_ratio=0.5),
            r"StructuredPruning.channel_ratio: 0.5 is for the generic layout .* but "
            r"BertForSequenceClassification is a BERT-style encoder, pruned by head_ratio and ffn_ratio: set "
            r"those instead",
        ),
        (
            CNN,
            StructuredPruning(head_ratio=0.5),
            r"StructuredPruning.head_ratio: 0.5 is for BERT-style encoders and Llama-family decoders, but "
            r"Sequential is a network of Conv/Linear layers \(generic layout\), pruned by channel_ratio: set "
            r"that instead",
        ),
        (
            CNN,
            StructuredPruning(channel_ratio=0.5, module="body"),
            r"StructuredPruning.module: CNN has no submodule 'body'; its children are \['net', 'loss'\]",
        ),
        (
            CNN,
            StructuredPruning(channel_ratio=0.5, module="loss"),
            r"StructuredPruning.module: 'loss' is a CrossEntropyLoss with nothing to prune: looked for a "
            r"BERT-style encoder, a Llama-family decoder or Conv/Linear layers torch-pruning can trace in "
            r"it; found no Conv/Linear layer",
        ),
        (
            Empty,
            StructuredPruning(channel_ratio=0.5),
            r"StructuredPruning.module: looked for a BERT-style encoder, a Llama-family decoder or "
            r"Conv/Linear layers torch-pruning can trace in Empty; found no Conv/Linear layer",
        ),
        (
            CNN,
            StructuredPruning(channel_ratio=0.03),
            r"StructuredPruning: channel_ratio=0.03 removes nothing from output channels conv1 8, conv2 16, "
            r"fc 32 \(Sequential, a network of Conv/Linear layers \(generic layout\); .* raise channel_ratio",
        ),
        (
            CNN,
            StructuredPruning(channel_ratio=0.5, importance="activation"),
            r"StructuredPruning.importance: 'activation' is for Llama-family decoders; the generic layout "
            r"ranks channels by torch-pruning's group magnitude \('magnitude', the default\) or",
        ),
    ],
    ids=[
        "channel-on-bert",
        "head-on-cnn",
        "no-such-module",
        "module-without-layers",
        "nothing",
        "few",
        "activation",
    ],
)
def test_refusals_say_what_was_looked_for_and_found(make, pruning, message):
    with pytest.raises(ValueError, match=message) as caught:
        fit(make(), [pruning], max_steps=1)
    assert "pass module=" not in str(caught.value) or pruning.module is None


class Flat(pl.LightningModule):
    """The layers are the LightningModule's own attributes, its forward the network."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.hidden, self.out = nn.Conv2d(1, 8, 3), nn.Linear(8, 16), nn.Linear(16, 10)

    def forward(self, images):
        features = self.conv(images).relu().mean(dim=(2, 3))
        return self.out(self.hidden(features).relu())

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_lightning_module_made_of_its_own_layers_is_traced_itself():
    module, pruning = Flat(), StructuredPruning(channel_ratio=0.5)
    fit(module, [pruning], max_steps=2)
    assert (module.conv.out_channels, module.hidden.weight.shape, module.out.weight.shape) == (
        4,
        (8, 4),
        (10, 8),
    )
    assert module.structured_pruning_history == pruning.history


def test_a_named_module_that_is_no_hugging_face_model_is_explained():
    module = CNN()
    with pytest.raises(
        ValueError, match=r"module: 'net' is a Sequential, not a Hugging Face model"
    ) as caught:
        find_prunable_model(module, "net")
    assert "pass module=" not in str(caught.value)


def test_example_inputs_come_from_the_batch():
    class Takes(nn.Module):
        def forward(self, pixel_values):
            return pixel_values

    x = torch.zeros(2, 1, 8, 8)
    assert example_inputs(Takes(), [x, torch.zeros(2)])[0] is x
    assert example_inputs(Takes(), {"pixel_values": x, "labels": torch.zeros(2), "id": "a"}) == {
        "pixel_values": x
    }
    with pytest.raises(
        TypeError, match=r"batch: none of the dict batch's tensors \['image'\] is an argument"
    ):
        example_inputs(Takes(), {"image": x})


def test_a_layer_producing_the_output_stays_whole_whatever_the_target_rule_says():
    network = net()
    names = {module: name for name, module in network.named_modules()}
    with traceable(network):
        traced = traced_graph(network, (torch.randn(2, 1, 8, 8),))
        reasons = {
            names[g[0].dep.target.module]: kept_reason(g, traced, names)
            for g in traced.graph.get_all_groups()
        }
    assert reasons == {
        "out": "its channels are the network's output (through out)",
        "fc": None,
        "conv2": None,
        "conv1": None,
    }

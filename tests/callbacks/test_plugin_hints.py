"""The smaller things a user's own module met (issue 12, item 5): each hint names the layer or the fix."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from compress.callbacks import ExactResume, L1Sparsity, MagnitudePruning
from tests.compress.sparsity.test_targets import CNN, Holder
from tests.conftest import quick_trainer


def images(rows: int = 16) -> TensorDataset:
    torch.manual_seed(0)
    return TensorDataset(torch.randn(rows, 1, 8, 8), torch.randint(0, 10, (rows,)))


def test_two_four_names_the_layer_whose_input_does_not_split_before_training():
    """Before: "needs the input size to be a multiple of m=4; got 9", during the first step."""
    module = Holder(CNN())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"but net.conv1 has 9; leave that layer out with exclude=\['net.conv1'\]"
    ):
        quick_trainer(steps=1, callbacks=[MagnitudePruning(pattern="2:4")]).fit(module, DataLoader(images()))
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    pruning = MagnitudePruning(pattern="2:4", exclude=["net.conv1"])
    quick_trainer(steps=1, callbacks=[pruning]).fit(Holder(CNN()), DataLoader(images(), batch_size=4))
    assert pruning.sparsity == 0.5


def test_l1_that_kills_whole_layers_says_so():
    """Before: a strength driving whole layers to zero (accuracy 0.086) passed without a word."""
    seed_everything(0)
    l1 = L1Sparsity(strength=1e3, mode="proximal")
    with pytest.warns(
        UserWarning, match=r"L1Sparsity: every weight of 'net.conv1' is now within 0.001 of zero"
    ):
        quick_trainer(steps=2, callbacks=[l1], log_every_n_steps=1).fit(
            Holder(CNN()), DataLoader(images(), batch_size=4)
        )
    assert "net.conv1" in l1.dead


def test_a_checkpointing_run_without_exact_resume_is_told_what_to_add(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    with pytest.warns(
        UserWarning, match=r"MagnitudePruning: this run writes checkpoints but has no ExactResume"
    ):
        quick_trainer(tmp_path, steps=1, callbacks=[MagnitudePruning(), checkpoint]).fit(
            Holder(CNN()), DataLoader(images(), batch_size=4)
        )


def test_a_dataloader_with_its_own_generator_is_named_on_resume(tmp_path):
    def loader():
        return DataLoader(images(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    quick_trainer(tmp_path, steps=4, callbacks=[ExactResume(), checkpoint]).fit(Holder(CNN()), loader())
    with pytest.warns(
        UserWarning, match="shuffles with its own `generator`, whose state is not in the checkpoint"
    ):
        quick_trainer(tmp_path, steps=8, callbacks=[ExactResume()]).fit(
            Holder(CNN()), loader(), ckpt_path=str(tmp_path / "last.ckpt")
        )

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from compress.data import TextClassificationDataModule
from compress.modules import TaskModule
from tests.conftest import quick_trainer, tiny_bert


class PoisonClassifier(Callback):
    """From step 3 on, the classifier's bias is NaN: the loss turns NaN."""

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == 3:
            with torch.no_grad():
                pl_module.model.classifier.bias.fill_(float("nan"))


def test_nan_loss_stops_before_the_step_and_keeps_the_last_good_checkpoint(tiny_data_kwargs, tmp_path):
    module = TaskModule(tiny_bert(num_labels=3, layers=2), learning_rate=1e-3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = quick_trainer(tmp_path, steps=10, callbacks=[PoisonClassifier(), checkpoint])
    with pytest.raises(FloatingPointError, match=r"training loss is nan at optimizer step 3 .*learning_rate"):
        trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    encoder = module.model.bert.encoder.layer[0].output.dense.weight
    assert torch.isfinite(encoder).all()  # no NaN gradient reached the weights

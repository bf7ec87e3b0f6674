"""A loss of your own (no KDLoss subclass, not even an nn.Module) trains a student in DistillationModule,
is stored in checkpoints as plain data and comes back from them."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compress.data import TextClassificationDataModule
from compress.distill import DistillationLoss
from compress.distill.losses import hard_ce
from compress.modules import DistillationModule
from compress.peft import StudentFromTeacher
from tests.conftest import quick_trainer


class ProbabilityMSE:
    """MSE between student and teacher probabilities, plus a weighted hard-label CE."""

    def __init__(self, hard_weight: float = 0.25, temperature: float = 1.0) -> None:
        self.hard_weight, self.temperature = hard_weight, temperature
        self.masks: list[tuple[int, ...]] = []

    def components(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        self.masks.append(tuple(attention_mask.shape))
        t = self.temperature
        mse = F.mse_loss((student_logits / t).softmax(-1), (teacher_logits / t).softmax(-1))
        hard = hard_ce(student_logits, labels)
        return {"loss": self.hard_weight * hard + mse, "hard": hard, "mse": mse}


def _module(teacher: str, loss) -> DistillationModule:
    return DistillationModule(
        teacher=teacher, student=StudentFromTeacher(layers=[0, 2]), loss=loss, learning_rate=1e-3
    )


def test_a_loss_of_your_own_trains_the_student_and_logs_its_parts(
    tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    loss = ProbabilityMSE(hard_weight=0.5, temperature=2.0)
    assert isinstance(loss, DistillationLoss) and not isinstance(loss, nn.Module)
    module = _module(tiny_teacher_dir, loss)
    before = {k: v.clone() for k, v in module.student.state_dict().items()}
    trainer = quick_trainer(tmp_path, steps=3)
    trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs, transfer_fraction=0.5))
    assert {"train/loss", "train/hard", "train/mse"} <= set(trainer.callback_metrics)
    assert "train/soft" not in trainer.callback_metrics
    assert len(loss.masks) == 3 and all(len(shape) == 2 for shape in loss.masks)  # (batch, positions)
    assert any(not torch.equal(v, module.student.state_dict()[k]) for k, v in before.items())

    path = trainer.checkpoint_callback.best_model_path
    stored = torch.load(path, weights_only=True)["hyper_parameters"]["loss"]
    assert stored == {
        "class_path": f"{__name__}.ProbabilityMSE",
        "init_args": {"hard_weight": 0.5, "temperature": 2.0},
    }
    loaded = DistillationModule.load_from_checkpoint(path)
    assert type(loaded.loss) is ProbabilityMSE and loaded.loss.temperature == 2.0
    assert loaded.loss.hard_weight == 0.5


def test_the_mixture_of_several_teachers_uses_the_loss_temperature(tiny_teacher_dir, tiny_data_kwargs):
    from compress.distill.multi_teacher import average_teacher_logits

    module = DistillationModule(
        teacher=[tiny_teacher_dir, tiny_teacher_dir],
        teacher_weights=[1.0, 3.0],
        student=StudentFromTeacher(layers=[0]),
        loss=ProbabilityMSE(temperature=4.0),
    )
    data = TextClassificationDataModule(**tiny_data_kwargs)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    single = module._teacher_outputs(batch, module.teacher).logits
    expected = average_teacher_logits([single, single], [0.25, 0.75], temperature=4.0)
    assert torch.allclose(module.teacher_logits(batch), expected)


def test_an_object_that_is_not_a_distillation_loss_is_refused(tiny_teacher_dir):
    with pytest.raises(TypeError, match="model.loss: MSELoss is not a distillation loss .*temperature"):
        _module(tiny_teacher_dir, nn.MSELoss())


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"class_path": "subprocess.Popen", "init_args": {"args": "true"}}, "cannot rebuild"),
        ({"class_path": "torch.nn.MSELoss", "init_args": {}}, "cannot rebuild"),
        ({"class_path": "not_imported_anywhere.Loss", "init_args": {}}, "not a class of an imported module"),
    ],
    ids=["not-a-loss", "no-components", "not-imported"],
)
def test_a_stored_loss_is_rebuilt_only_as_a_distillation_loss(stored, message, tiny_teacher_dir):
    with pytest.raises(ValueError, match=f"model.loss: .*{message}"):
        _module(tiny_teacher_dir, stored)


def test_under_ddp_the_hard_part_is_reweighted_through_hard_weight_alone():
    from compress.distill.protocol import reweight_hard

    parts = ProbabilityMSE(hard_weight=0.5).components(
        torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, -100, 2]), torch.ones(4, 5)
    )
    factor = torch.tensor(3 * 2 / 4.0)  # 3 labelled rows here, 4 over both ranks
    moved = reweight_hard(parts, 0.5, factor)
    assert torch.allclose(moved["hard"], parts["hard"] * factor)
    assert torch.allclose(moved["loss"] - parts["loss"], 0.5 * (moved["hard"] - parts["hard"]))
    assert torch.equal(moved["mse"], parts["mse"])

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig
from torch import nn

from compress.callbacks import MagnitudePruning
from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule, TaskModule
from compress.peft import StudentFromTeacher
from compress.sparsity import CubicSparsitySchedule, merge_lora_keep_sparsity
from tests.compress.modules.test_distillation import StopAfterEpochs
from tests.conftest import quick_trainer, tiny_bert


class Recorder(Callback):
    """After every optimizer step (it runs after the pruning callback): masks and the pruned weights."""

    def __init__(self, pruning: MagnitudePruning) -> None:
        self.pruning = pruning
        self.rows: list[tuple[int, dict[str, torch.Tensor]]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        masks = {k: v.clone() for k, v in self.pruning.masks.items()}
        for name, mask in masks.items():
            weight = self.pruning.targets[name].weight
            assert torch.all(weight[~mask] == 0), f"{name}: a pruned weight is not zero"
        self.rows.append((trainer.global_step, masks))


def task(layers: int = 2, dropout: float = 0.0) -> TaskModule:
    return TaskModule(tiny_bert(num_labels=3, layers=layers, dropout=dropout), learning_rate=1e-3)


def fit(module, callbacks, data_kwargs, steps=12, **kwargs):
    trainer = quick_trainer(steps=steps, callbacks=callbacks, **kwargs)
    trainer.fit(module, datamodule=TextClassificationDataModule(**data_kwargs))
    return trainer


def test_follows_the_cubic_schedule_exactly_and_never_revives(tiny_data_kwargs):
    seed_everything(0)
    module = task()
    pruning = MagnitudePruning(target_sparsity=0.6, start_step=0, end_step=8, frequency=2)
    recorder = Recorder(pruning)
    fit(module, [pruning, recorder], tiny_data_kwargs)
    schedule = CubicSparsitySchedule(0.6, 0.0, 0, 8, 2)
    total = sum(m.numel() for m in recorder.rows[0][1].values())
    last_pruning_step = 0
    for step, masks in recorder.rows:
        if schedule.is_pruning_step(step):
            last_pruning_step = step
        pruned = sum(int((~m).sum()) for m in masks.values())
        assert pruned == round(schedule.sparsity_at(last_pruning_step) * total), step
    for (_, before), (_, after) in zip(recorder.rows, recorder.rows[1:], strict=False):
        assert all(not (after[k] & ~before[k]).any() for k in before)
    assert pruning.sparsity == pytest.approx(0.6, abs=1 / total)


def test_default_targets_spare_embeddings_norms_biases_and_head(tiny_data_kwargs):
    seed_everything(0)
    module = task()
    zeros_before = {name: int((p == 0).sum()) for name, p in module.named_parameters()}
    pruning = MagnitudePruning(target_sparsity=0.5, end_step=2, frequency=1)
    fit(module, [pruning], tiny_data_kwargs, steps=3)
    assert len(pruning.targets) == 2 * 6 + 1  # q, k, v, attention out, intermediate, output; pooler
    assert all(name.startswith("model.bert.") and name.endswith(".weight") for name in pruning.targets)
    for name, param in module.named_parameters():
        if name not in pruning.targets:
            assert int((param == 0).sum()) <= zeros_before[name], name  # no new zeros outside the targets


def test_layer_scope_gives_every_tensor_the_target(tiny_data_kwargs):
    module = task()
    pruning = MagnitudePruning(target_sparsity=0.3, scope="layer", end_step=2, frequency=1)
    fit(module, [pruning], tiny_data_kwargs, steps=3)
    for name, mask in pruning.masks.items():
        assert int((~mask).sum()) == round(0.3 * mask.numel()), name


def test_two_four_pattern(tiny_data_kwargs):
    module = task()
    pruning = MagnitudePruning(pattern="2:4", start_step=1)
    fit(module, [pruning], tiny_data_kwargs, steps=4)
    assert pruning.sparsity == 0.5
    for name, module_ in pruning.targets.items():
        assert ((module_.weight != 0).reshape(-1, 4).sum(1) <= 2).all(), name


def test_lottery_ticket_rewinding_resets_survivors_to_early_weights(tiny_data_kwargs):
    seed_everything(0)
    module = task()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    pruning = MagnitudePruning(target_sparsity=0.5, start_step=1, end_step=3, frequency=1, rewind_step=0)
    recorder = Recorder(pruning)
    fit(module, [pruning, recorder], tiny_data_kwargs, steps=3)
    step, masks = recorder.rows[-1]
    assert step == 3
    for name, mask in masks.items():
        assert torch.equal(pruning.targets[name].weight, initial[name] * mask), name


def test_resume_gives_the_same_weights_and_masks(tiny_data_kwargs, tmp_path):
    def run(root, ckpt_path=None, extra=()):
        seed_everything(3)
        module = task(dropout=0.1)  # dropout: the resumed run must also draw the same random numbers
        pruning = MagnitudePruning(target_sparsity=0.7, start_step=2, end_step=11, frequency=3)
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        trainer = quick_trainer(
            root, steps=-1, max_epochs=3, callbacks=[pruning, checkpoint, *extra], deterministic=True
        )
        trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs), ckpt_path=ckpt_path)
        return module, pruning, trainer

    straight, straight_pruning, _ = run(tmp_path / "a")
    _, _, stopped = run(tmp_path / "b", extra=[StopAfterEpochs(1)])
    assert stopped.global_step == 5  # mid-schedule: pruned at steps 2 and 5
    seed_everything(99)
    resumed, resumed_pruning, trainer = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert trainer.global_step == 15
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert straight_pruning.masks.keys() == resumed_pruning.masks.keys()
    for k, mask in straight_pruning.masks.items():
        assert torch.equal(mask, resumed_pruning.masks[k]), k
    assert resumed_pruning.sparsity == pytest.approx(0.7, abs=1e-4)

    checkpoint = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert not any("weight_orig" in k or "weight_mask" in k for k in checkpoint["state_dict"])
    reloaded = TaskModule.load_from_checkpoint(tmp_path / "b" / "last.ckpt", model=tiny_bert(3, layers=2))
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k]), k


def test_lora_student_base_pruned_while_lora_teacher_and_head_untouched(tiny_teacher_dir, tiny_data_kwargs):
    seed_everything(0)
    module = DistillationModule(
        teacher=tiny_teacher_dir,
        student=StudentFromTeacher(layers=[0, 2]),
        learning_rate=1e-2,
        adapter=LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
    )
    teacher = {k: v.clone() for k, v in module.teachers.state_dict().items()}
    pruning = MagnitudePruning(target_sparsity=0.5, end_step=4, frequency=2)
    fit(module, [pruning], {**tiny_data_kwargs, "transfer_fraction": 0.3}, steps=6)

    assert all("lora_" not in name and "teacher" not in name for name in pruning.targets)
    assert any(name.endswith("query.base_layer.weight") for name in pruning.targets)
    for k, v in module.teachers.state_dict().items():
        assert torch.equal(v, teacher[k]), k
    lora_b = [p for n, p in module.student.named_parameters() if "lora_B" in n]
    assert lora_b and all(int((p == 0).sum()) == 0 for p in lora_b), "LoRA factors must not be pruned"

    base = module.student.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight
    zeros = base == 0
    assert zeros.float().mean() > 0.2
    merged = merge_lora_keep_sparsity(module.student)
    query = merged.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, nn.Linear) and torch.equal(query.weight == 0, zeros)


class TinyCNN(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_any_lightning_module_with_convolutions():
    seed_everything(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 2, (16,)))
    module = TinyCNN()
    pruning = MagnitudePruning(target_sparsity=0.5, end_step=3, frequency=1)
    trainer = quick_trainer(steps=4, callbacks=[pruning])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert sorted(pruning.targets) == ["features.0.weight", "features.2.weight"]
    assert pruning.sparsity == pytest.approx(0.5, abs=1e-2)
    assert int((module.head.weight == 0).sum()) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_sparsity=1.0), "target_sparsity"),
        (dict(target_sparsity=0.75, pattern="2:4"), "contradicts pattern"),
        (dict(pattern="4:2"), "pattern"),
        (dict(scope="tensor"), "scope"),
        (dict(frequency=0), "frequency"),
        (dict(start_step=5, end_step=2), "end_step"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MagnitudePruning(**kwargs)


def test_nothing_to_prune_fails_before_training(tiny_data_kwargs):
    module = task()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=r"MagnitudePruning.targets: \['no_such_layer'\] matches no"):
        fit(module, [MagnitudePruning(targets=["no_such_layer"])], tiny_data_kwargs)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


def test_masks_from_another_model_are_rejected_on_resume(tiny_data_kwargs):
    pruning = MagnitudePruning(end_step=2, frequency=1)
    pruning.load_state_dict(
        {
            "masks": {"model.bert.pooler.dense.weight": torch.ones(3, 3, dtype=torch.bool)},
            "last_step": 1,
            "end_step": 2,
            "rewind_weights": None,
        }
    )
    with pytest.raises(ValueError, match="saved mask for 'model.bert.pooler.dense.weight'"):
        fit(task(), [pruning], tiny_data_kwargs, steps=2)

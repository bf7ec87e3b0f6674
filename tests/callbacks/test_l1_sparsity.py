import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig

from compress.callbacks import L1Sparsity, MagnitudePruning
from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule, TaskModule
from compress.peft import StudentFromTeacher
from tests.compress.modules.test_distillation import StopAfterEpochs
from tests.conftest import quick_trainer, tiny_bert


class GradRecorder(Callback):
    """Gradients as the optimizer will see them (runs after L1Sparsity's hook)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def task(dropout: float = 0.0) -> TaskModule:
    return TaskModule(tiny_bert(num_labels=3, layers=2, dropout=dropout), learning_rate=1e-3)


def fit(module, callbacks, data_kwargs, steps=3, **kwargs):
    trainer = quick_trainer(steps=steps, callbacks=callbacks, **kwargs)
    trainer.fit(module, datamodule=TextClassificationDataModule(**data_kwargs))
    return trainer


def first_step_grads(data_kwargs, **l1_kwargs) -> tuple[dict, L1Sparsity]:
    seed_everything(0)
    recorder = GradRecorder()
    sparsity = L1Sparsity(**l1_kwargs)
    fit(task(), [sparsity, recorder], data_kwargs, steps=1)
    return recorder.grads[0], sparsity


def test_subgradient_mode_adds_strength_times_sign(tiny_data_kwargs):
    plain, _ = first_step_grads(tiny_data_kwargs, strength=0.0)
    seed_everything(0)
    initial = task().state_dict()
    penalised, sparsity = first_step_grads(tiny_data_kwargs, strength=0.05)
    for name, grad in plain.items():
        expected = grad
        if name in {f"{n}.weight" for n in sparsity.targets}:
            expected = grad + 0.05 * torch.sign(initial[name])
        torch.testing.assert_close(penalised[name], expected, msg=name)


def test_warmup_ramps_the_strength():
    sparsity = L1Sparsity(strength=1e-3, warmup_steps=10)
    assert [sparsity.strength_at(t) for t in (0, 5, 10, 50)] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])


def test_proximal_mode_produces_exact_zeros(tiny_data_kwargs):
    seed_everything(0)
    module = task()
    sparsity = L1Sparsity(strength=20.0, mode="proximal")  # threshold lr·λ = 0.02: most init weights
    fit(module, [sparsity], tiny_data_kwargs, steps=3)
    weights = [m.weight for m in sparsity.targets.values()]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros > 0.5
    assert int((module.model.classifier.weight == 0).sum()) == 0


def test_group_lasso_removes_whole_ffn_channels(tiny_data_kwargs):
    seed_everything(0)
    module = task()
    sparsity = L1Sparsity(strength=150.0, mode="proximal", groups=True)  # channel norms ~0.16
    fit(module, [sparsity], tiny_data_kwargs, steps=3)
    assert sparsity.groups is not None and len(sparsity.groups) == 4  # attention + FFN, two layers
    layer = module.model.bert.encoder.layer[0]
    rows_dead = (layer.intermediate.dense.weight == 0).all(1)
    cols_dead = (layer.output.dense.weight == 0).all(0)
    assert rows_dead.any() and torch.equal(rows_dead, cols_dead)
    partially = ((layer.intermediate.dense.weight == 0).any(1) & ~rows_dead).any()
    assert not partially, "group lasso zeroes channels, not single weights"


def test_frozen_targets_are_refused_before_training(tiny_teacher_dir, tiny_data_kwargs):
    module = DistillationModule(
        teacher=tiny_teacher_dir, student=StudentFromTeacher(layers=[0, 2]), adapter=LoraConfig(r=2)
    )
    with pytest.raises(ValueError, match="every target weight is frozen"):
        fit(module, [L1Sparsity()], tiny_data_kwargs, steps=1)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(strength=-1.0), "strength"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(mode="lasso"), "mode"),
    ],
)
def test_bad_settings(kwargs, field):
    with pytest.raises(ValueError, match=field):
        L1Sparsity(**kwargs)


def test_kd_lora_l1_and_magnitude_pruning_compose(tiny_teacher_dir, tiny_data_kwargs):
    """One Trainer: distillation into a LoRA student, L1 on the LoRA factors, pruning of the frozen base."""
    seed_everything(1)
    module = DistillationModule(
        teacher=tiny_teacher_dir,
        student=StudentFromTeacher(layers=[0, 2]),
        learning_rate=1e-2,
        adapter=LoraConfig(r=4, target_modules=["query", "value"]),
    )
    l1_cb = L1Sparsity(strength=1e-3, targets=[r"lora_"], exclude=[r"teacher"], mode="proximal")
    pruning = MagnitudePruning(target_sparsity=0.5, start_step=1, end_step=6, frequency=2)
    fit(module, [l1_cb, pruning], {**tiny_data_kwargs, "transfer_fraction": 0.3}, steps=8)
    assert all("lora_" in name for name in l1_cb.targets) and len(l1_cb.targets) == 8
    assert all("lora_" not in name for name in pruning.targets)
    assert pruning.sparsity == pytest.approx(0.5, abs=1e-3)
    assert torch.isfinite(torch.stack([p.sum() for p in module.student.parameters()])).all()


def test_resume_matches_an_uninterrupted_run(tiny_data_kwargs, tmp_path):
    def run(root, ckpt_path=None, extra=()):
        seed_everything(5)
        module = task(dropout=0.1)
        callbacks = [L1Sparsity(strength=5.0, warmup_steps=8, mode="proximal", groups=True), *extra]
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        trainer = quick_trainer(
            root, steps=-1, max_epochs=2, callbacks=[*callbacks, checkpoint], deterministic=True
        )
        trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs), ckpt_path=ckpt_path)
        return module

    straight = run(tmp_path / "a")
    run(tmp_path / "b", extra=[StopAfterEpochs(1)])
    resumed = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k

"""`KeepSparsity`: one-shot-pruned students recover by distillation with their zeros kept; exact resume."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig

from compress.callbacks import KeepSparsity
from compress.distill import KDLoss
from compress.modules import DistillationModule
from compress.sparsity import merge_lora_keep_sparsity, prune_oneshot
from tests.compress.modules.causal_lm_models import batches, tiny_llama
from tests.conftest import quick_trainer

KD = KDLoss(alpha=0.0, temperature=1.0)


def pruned_student(pattern: str | None = None):
    student = tiny_llama(seed=1)
    masks = prune_oneshot(student, batches(rows=8), method="wanda", pattern=pattern, progress=False)
    return student, masks


def student_weights(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.student.named_parameters()}


def test_recovery_keeps_every_pruned_weight_at_zero_and_trains_the_rest():
    student, masks = pruned_student()
    module = DistillationModule(tiny_llama(seed=1), student, KD, learning_rate=1e-2)
    before = student_weights(module)
    callback = KeepSparsity()
    quick_trainer(steps=4, callbacks=[callback], limit_val_batches=0).fit(module, batches())
    after = student_weights(module)
    assert len(callback.masks) == len(masks) == 28  # 4 layers x 7 Linears
    for name, keep in masks.items():
        weight = after[name]
        assert bool((weight[~keep] == 0).all()), name
        assert not torch.equal(weight[keep], before[name][keep]), name  # the kept weights trained
    assert torch.equal(callback.masks[f"student.{next(iter(masks))}"].cpu(), next(iter(masks.values())))


def test_without_the_callback_the_zeros_come_back():
    student, masks = pruned_student()
    module = DistillationModule(tiny_llama(seed=1), student, KD, learning_rate=1e-2)
    quick_trainer(steps=2, limit_val_batches=0).fit(module, batches())
    name, keep = next(iter(masks.items()))
    assert bool((module.student.get_parameter(name)[~keep] != 0).any())


def test_given_masks_are_matched_to_the_trained_module_by_parameter_name():
    student, masks = pruned_student(pattern="2:4")
    module = DistillationModule(tiny_llama(seed=1), student, KD, learning_rate=1e-2)
    callback = KeepSparsity(masks=masks)
    quick_trainer(steps=2, callbacks=[callback], limit_val_batches=0).fit(module, batches())
    assert sorted(callback.masks) == sorted(f"student.{name}" for name in masks)
    groups = module.student.get_parameter("model.layers.1.mlp.down_proj.weight").reshape(-1, 4)
    assert int((groups != 0).sum(dim=1).max()) <= 2


def test_lora_recovery_then_the_masked_merge_keeps_the_sparsity():
    student, masks = pruned_student()
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    module = DistillationModule(tiny_llama(seed=1), student, KD, adapter=lora, learning_rate=1e-2)
    quick_trainer(steps=2, callbacks=[KeepSparsity()], limit_val_batches=0).fit(module, batches())
    merged = merge_lora_keep_sparsity(module.student)
    for name, keep in masks.items():
        weight = merged.get_parameter(name)
        assert bool((weight[~keep] == 0).all()), name
    assert not torch.equal(
        merged.get_parameter("model.layers.0.self_attn.q_proj.weight"), student_dense_copy()
    )


def student_dense_copy() -> torch.Tensor:
    """The pruned q_proj of layer 0 before recovery: the merge must have added the LoRA update."""
    return pruned_student()[0].get_parameter("model.layers.0.self_attn.q_proj.weight").detach()


def test_a_resumed_recovery_ends_like_an_uninterrupted_one(tmp_path):
    class StopAt(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = trainer.global_step >= 2

    def run(root, ckpt_path=None, stop=()):
        student, _ = pruned_student()
        module = DistillationModule(tiny_llama(seed=1), student, KD, learning_rate=1e-2)
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, every_n_train_steps=1)
        callback = KeepSparsity()
        callbacks = [checkpoint, callback, *stop]
        trainer = quick_trainer(root, steps=4, callbacks=callbacks, limit_val_batches=0)
        trainer.fit(module, batches(rows=8), ckpt_path=ckpt_path)  # stopped at an epoch end
        return module, callback

    straight, straight_masks = run(tmp_path / "a")
    assert run(tmp_path / "b", stop=[StopAt()])[0].trainer.global_step == 2
    resumed, resumed_masks = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert resumed.trainer.global_step == 4
    assert straight_masks.masks.keys() == resumed_masks.masks.keys()
    assert all(torch.equal(straight_masks.masks[k], resumed_masks.masks[k]) for k in straight_masks.masks)
    for name, weight in student_weights(straight).items():
        assert torch.equal(weight, student_weights(resumed)[name]), name


def test_a_dense_model_is_refused_with_what_to_do():
    module = DistillationModule(tiny_llama(seed=1), tiny_llama(seed=2), KD)
    with pytest.raises(ValueError, match="none of the target weights has a zero"):
        quick_trainer(steps=1, callbacks=[KeepSparsity()], limit_val_batches=0).fit(module, batches())


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        ({"model.layers.7.mlp.up_proj.weight": torch.ones(64, 32, dtype=torch.bool)}, "matches no target"),
        ({"model.layers.0.mlp.up_proj.weight": torch.ones(3, 3, dtype=torch.bool)}, "has shape"),
    ],
)
def test_masks_of_another_model_are_refused(masks, message):
    student, _ = pruned_student()
    module = DistillationModule(tiny_llama(seed=1), student, KD)
    with pytest.raises(ValueError, match=message):
        quick_trainer(steps=1, callbacks=[KeepSparsity(masks=masks)], limit_val_batches=0).fit(
            module, batches()
        )

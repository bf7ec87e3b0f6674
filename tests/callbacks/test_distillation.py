"""`Distillation` around a user's own LightningModule: the teacher is owned, frozen, out of the optimizer and
of every checkpoint, never pruned; the loss is KDLoss's; resume is exact; errors name the setting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from compress.callbacks import Distillation, ExactResume, MagnitudePruning, distillation_loss
from compress.data import TextClassificationDataModule
from compress.distill import KDLoss
from compress.distill.causal_lm import NextTokens
from compress.distill.intermediate import IntermediateDistillation
from tests.compress.modules.test_distillation import StopAfterEpochs
from tests.conftest import quick_trainer, tiny_bert

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class UserClassifier(LightningModule):
    """A user's own module: a Hugging Face classifier under their name, optionally a frozen teacher beside
    it under an arbitrary name, and `distillation_loss` as the one changed line."""

    def __init__(self, teacher: nn.Module | None = None, layers: int = 2) -> None:
        super().__init__()
        self.encoder = tiny_bert(num_labels=3, layers=layers, seed=1, dropout=0.1)
        if teacher is not None:
            self.big_model = teacher.requires_grad_(False).eval()
        self.losses: list[float] = []
        self.first_logits: dict[str, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        logits = self.encoder(**{k: batch[k] for k in INPUTS if k in batch}).logits
        loss = distillation_loss(self, logits, batch["labels"])
        self.losses.append(float(loss))
        if not self.first_logits:
            self.first_logits = {"student": logits.detach(), "labels": batch["labels"], "batch": batch}
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self.encoder(**{k: batch[k] for k in INPUTS if k in batch}).logits
        self.log("val/loss", distillation_loss(self, logits, batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)  # the teacher's frozen weights too


def data(tiny_data_kwargs):
    return TextClassificationDataModule(**tiny_data_kwargs)


def test_teacher_folder_gives_kdloss_and_stays_frozen_outside_the_module(tiny_teacher_dir, tiny_data_kwargs):
    seed_everything(0)
    module = UserClassifier()
    kd = Distillation(teacher=tiny_teacher_dir, loss=KDLoss(alpha=0.3, temperature=2.0))
    trainer = quick_trainer(steps=3, callbacks=[kd])
    trainer.fit(module, datamodule=data(tiny_data_kwargs))
    teacher = kd.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in module.state_dict())  # the module holds no teacher
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    first = module.first_logits
    with torch.no_grad():
        teacher_logits = teacher(**{k: first["batch"][k] for k in INPUTS if k in first["batch"]}).logits
    expected = KDLoss(alpha=0.3, temperature=2.0)(first["student"], teacher_logits, first["labels"])
    assert module.losses[0] == pytest.approx(float(expected), rel=1e-6)


def test_without_the_callback_it_is_the_cross_entropy(tiny_data_kwargs):
    seed_everything(0)
    module = UserClassifier()
    quick_trainer(steps=1).fit(module, datamodule=data(tiny_data_kwargs))
    first = module.first_logits
    assert module.losses[0] == pytest.approx(float(F.cross_entropy(first["student"], first["labels"])))


def test_teacher_under_any_name_is_never_pruned_nor_checkpointed_and_resumes_exactly(
    tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    """The issue's cases: a frozen teacher kept as ``self.big_model`` lost 45% of its weights to
    MagnitudePruning, and landed in every checkpoint."""
    from transformers import AutoModelForSequenceClassification

    def run(root, ckpt_path=None, extra=()):
        seed_everything(3)
        teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
        module = UserClassifier(teacher)
        callbacks = [
            Distillation(teacher="big_model"),
            MagnitudePruning(target_sparsity=0.5, start_step=1, end_step=6, frequency=2),
            ExactResume(),
            ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0),
            *extra,
        ]
        trainer = quick_trainer(root, steps=-1, max_epochs=2, callbacks=callbacks, deterministic=True)
        trainer.fit(module, datamodule=data(tiny_data_kwargs), ckpt_path=ckpt_path)
        return module, teacher, trainer

    original = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).state_dict()
    straight, teacher, _ = run(tmp_path / "a")
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in original.items())  # not one zeroed
    pruned = straight.encoder.bert.encoder.layer[0].intermediate.dense.weight
    assert float((pruned == 0).float().mean()) > 0.3
    assert straight.encoder.classifier.weight.ne(0).all()  # the output layer, found by structure
    checkpoint = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("big_model.") for k in checkpoint["state_dict"])
    assert any(k.startswith("encoder.") for k in checkpoint["state_dict"])

    _, _, stopped = run(tmp_path / "b", extra=[StopAfterEpochs(1)])
    assert stopped.global_step == 5
    resumed, _, trainer = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert trainer.global_step == 10
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_a_different_teacher_on_resume_is_refused(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = quick_trainer(tmp_path, steps=1, callbacks=[Distillation(teacher=tiny_teacher_dir), checkpoint])
    trainer.fit(UserClassifier(), datamodule=data(tiny_data_kwargs))
    other = tiny_bert(num_labels=3, layers=2, seed=7)
    trainer = quick_trainer(tmp_path, steps=2, callbacks=[Distillation(teacher=other)])
    with pytest.raises(ValueError, match="Distillation.teacher: the checkpoint was trained against another"):
        trainer.fit(
            UserClassifier(), datamodule=data(tiny_data_kwargs), ckpt_path=str(tmp_path / "last.ckpt")
        )


@pytest.mark.parametrize(
    ("teacher", "error", "message"),
    [
        ("encoder", ValueError, "'encoder' holds every trainable parameter"),
        (42, TypeError, "Distillation.teacher: int is not a folder"),
        ("no/such/folder", FileNotFoundError, "Distillation.teacher: model source"),
    ],
)
def test_bad_teachers_fail_before_training(teacher, error, message, tiny_data_kwargs):
    module = UserClassifier()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(error, match=message):
        quick_trainer(steps=1, callbacks=[Distillation(teacher=teacher)]).fit(
            module, datamodule=data(tiny_data_kwargs)
        )
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


def test_a_teacher_predicting_other_classes_is_refused(tiny_data_kwargs):
    teacher = tiny_bert(num_labels=5, layers=1)
    with pytest.raises(ValueError, match=r"logits have shape \(8, 5\) but the student's have \(8, 3\)"):
        quick_trainer(steps=1, callbacks=[Distillation(teacher=teacher)]).fit(
            UserClassifier(), datamodule=data(tiny_data_kwargs)
        )


def test_intermediate_matching_trains_its_projection_and_resumes_it(tiny_data_kwargs, tmp_path):
    """Hidden states of a 2-layer, 32-wide student matched with a 4-layer, 48-wide teacher."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(5)
    wide = BertForSequenceClassification(
        BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=4, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=128, num_labels=3)
    )  # fmt: skip
    matching = IntermediateDistillation(hidden_weight=1.0)
    kd = Distillation(teacher=wide, intermediate=matching)
    seed_everything(0)
    module = UserClassifier()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = quick_trainer(tmp_path, steps=3, callbacks=[kd, checkpoint])
    before = kd.__dict__.get("matching")
    trainer.fit(module, datamodule=data(tiny_data_kwargs))
    assert before is None and kd.matching is not None
    projection = kd.matching.projections[0].weight
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert id(projection) in optimized
    assert "train/kd_hidden" in trainer.callback_metrics
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    (state,) = [s for k, s in saved["callbacks"].items() if k.startswith("Distillation")]
    assert torch.equal(state["matching"]["projections.0.weight"], projection.detach().cpu())


class UserLM(LightningModule):
    """A user's causal LM module: HF labels unshifted, `distillation_loss` shifts them."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lm = LlamaForCausalLM(config)
        self.seen: list = []

    def training_step(self, batch, batch_idx):
        logits = self.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = distillation_loss(self, logits, batch["labels"])
        self.seen.append((logits.detach(), batch, float(loss)))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.lm.parameters(), lr=0.1)


def test_causal_lm_teacher_and_student_shift_by_one_position():
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8)  # fmt: skip
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (8, 6))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # padding
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": i.masked_fill(m == 0, -100)}
        for i, m in zip(ids, mask, strict=True)
    ]
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    module = UserLM(config)
    loss = KDLoss(alpha=0.5, temperature=1.0)
    quick_trainer(steps=1, callbacks=[Distillation(teacher=teacher, loss=loss)]).fit(module, loader)
    logits, batch, value = module.seen[0]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    tokens = NextTokens.of(batch)
    expected = loss(tokens.select(logits), tokens.select(teacher_logits), tokens.labels)
    assert value == pytest.approx(float(expected), rel=1e-6)

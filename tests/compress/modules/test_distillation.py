import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig
from transformers import BertConfig, BertModel

from compress.data import TextClassificationDataModule
from compress.distill import KDLoss
from compress.modules import DistillationModule, TaskModule
from compress.peft import StudentFromTeacher
from tests.conftest import WORDS, tiny_bert


def trainer(tmp_path=None, **kwargs) -> Trainer:
    defaults = dict(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    return Trainer(**{**defaults, **kwargs}, default_root_dir=tmp_path)


def module(tiny_teacher_dir, **kwargs) -> DistillationModule:
    return DistillationModule(
        teacher=tiny_teacher_dir,
        student=StudentFromTeacher(layers=[0, 2]),
        loss=KDLoss(alpha=0.5, temperature=2.0),
        learning_rate=1e-3,
        **kwargs,
    )


def student_state(m: DistillationModule) -> dict:
    return {k: v.clone() for k, v in m.student.state_dict().items()}


def test_teacher_is_frozen_in_eval_and_outside_the_optimizer(tiny_teacher_dir, tiny_data_kwargs):
    m = module(tiny_teacher_dir)
    data = TextClassificationDataModule(**tiny_data_kwargs, transfer_fraction=0.5)
    teacher_before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    student_before = student_state(m)
    trainer(max_steps=4, limit_val_batches=1).fit(m, datamodule=data)
    assert not m.teacher.training and m.student.training
    assert all(not p.requires_grad for p in m.teacher.parameters())
    optimized = {id(p) for group in m.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in m.teacher.parameters()}
    assert optimized == {id(p) for p in m.student.parameters()}
    assert all(torch.equal(v, m.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, m.student.state_dict()[k]) for k, v in student_before.items())
    assert m.student.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


def test_teacher_metrics_logged_once_on_validation(tiny_teacher_dir, tiny_data_kwargs):
    m = module(tiny_teacher_dir)
    t = trainer(max_epochs=2, limit_train_batches=2)
    t.fit(m, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    assert {"val/acc", "val/f1", "val/teacher_acc", "val/teacher_f1"} <= set(t.logged_metrics)
    assert m._teacher_evaluated


def test_checkpoint_leaves_out_the_teacher_and_reloads(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    m = module(tiny_teacher_dir)
    t = trainer(tmp_path, max_steps=2, limit_val_batches=1, enable_checkpointing=True)
    t.fit(m, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    path = t.checkpoint_callback.best_model_path
    state = torch.load(path, weights_only=True)["state_dict"]
    assert {k.split(".")[0] for k in state} == {"student"}  # no teacher weights
    loaded = DistillationModule.load_from_checkpoint(path)
    assert loaded.loss.temperature == 2.0 and loaded.student.config.num_hidden_layers == 2
    for k, v in m.student.state_dict().items():
        assert torch.equal(v, loaded.student.state_dict()[k])
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, loaded.teacher.state_dict()[k])


def test_save_teacher_keeps_it_in_checkpoints(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    m = module(tiny_teacher_dir, save_teacher=True)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=1, enable_checkpointing=True)
    t.fit(m, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    state = torch.load(t.checkpoint_callback.best_model_path, weights_only=True)["state_dict"]
    assert any(k.startswith("teachers.") for k in state)


class StopAfterEpochs(Callback):
    """Simulates an interruption: stops the run after ``epochs`` epochs, schedule untouched."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.parametrize(
    "adapter",
    [None, LoraConfig(r=4, target_modules=["query", "value"], lora_dropout=0.1)],
    ids=["full", "lora"],
)
def test_resume_matches_an_uninterrupted_run(adapter, tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    data_kwargs = {**tiny_data_kwargs, "transfer_fraction": 0.5}

    def run(root, ckpt_path=None, callbacks=()):
        seed_everything(7)
        m = module(tiny_teacher_dir, warmup_ratio=0.2, adapter=adapter)  # warm-up, then decay over 3 epochs
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        t = trainer(
            root,
            max_epochs=3,
            limit_val_batches=1,
            enable_checkpointing=True,
            callbacks=[checkpoint, *callbacks],
        )
        t.fit(m, datamodule=TextClassificationDataModule(**data_kwargs), ckpt_path=ckpt_path)
        return m, t

    straight, _ = run(tmp_path / "a")
    _, stopped = run(tmp_path / "b", callbacks=[StopAfterEpochs(1)])
    assert stopped.global_step == 5  # 36 rows, batch 8: 5 steps per epoch
    seed_everything(123)  # the resumed run must not depend on the process's RNG at resume time
    resumed, t = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert t.global_step == 15
    for k, v in straight.student.state_dict().items():
        assert torch.equal(v, resumed.student.state_dict()[k]), k


def test_label_count_mismatch_between_teacher_and_student(tiny_teacher_dir):
    with pytest.raises(ValueError, match="model.student: the student has 2 labels, the teacher 3"):
        DistillationModule(teacher=tiny_teacher_dir, student=tiny_bert(num_labels=2, layers=2))


def test_label_count_mismatch_with_the_data(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    import csv

    path = tmp_path / "binary.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["review", "sentiment"]] + [[f"text {i}", i % 2] for i in range(40)])
    data = TextClassificationDataModule(**{**tiny_data_kwargs, "source": str(path)})
    with pytest.raises(ValueError, match="model.student: the model head has 3 labels but the data"):
        trainer(max_steps=1).fit(module(tiny_teacher_dir), datamodule=data)


def test_base_model_is_refused_as_teacher(tmp_path):
    BertModel(
        BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model.teacher: .* is neither a fine-tuned classifier nor a causal"):
        DistillationModule(teacher=str(tmp_path))


def test_unfrozen_teacher_is_refused_before_training(tiny_teacher_dir, tiny_data_kwargs):
    m = module(tiny_teacher_dir)
    m.teacher.classifier.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="model.teacher: 1 teacher parameters require grad"):
        trainer(max_steps=1).fit(m, datamodule=TextClassificationDataModule(**tiny_data_kwargs))


def test_distillation_beats_nothing_learned(tiny_teacher_dir, tiny_data_kwargs):
    """The student moves toward the teacher: the soft loss falls during training."""
    m = DistillationModule(
        teacher=tiny_teacher_dir,
        student=tiny_bert(num_labels=3, layers=2, seed=1),
        loss=KDLoss(alpha=0.0, temperature=1.0),
        learning_rate=3e-3,
    )
    data = TextClassificationDataModule(**tiny_data_kwargs)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    before = float(
        m.loss(
            m.student.eval()(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
            m.teacher_logits(batch),
        )
    )
    m.student.train()
    trainer(max_epochs=8, limit_val_batches=0).fit(m, datamodule=data)
    m.student.eval()
    with torch.no_grad():
        after = float(m.loss(m(batch), m.teacher_logits(batch)))
    assert after < 0.5 * before


def test_task_module_learns_the_labels(tiny_data_kwargs):
    seed_everything(0)
    data = TextClassificationDataModule(**tiny_data_kwargs)
    m = TaskModule(tiny_bert(num_labels=3, layers=2, dropout=0.0), learning_rate=3e-3, lr_schedule="constant")
    t = trainer(max_epochs=15, limit_val_batches=0)
    t.fit(m, datamodule=data)
    metrics = t.test(m, datamodule=data, verbose=False)[0]
    assert metrics["test/acc"] > 0.8  # the classes have disjoint vocabularies


def test_bf16_mixed_precision_trains(tiny_teacher_dir, tiny_data_kwargs):
    m = module(tiny_teacher_dir)
    before = student_state(m)
    t = trainer(max_steps=2, limit_val_batches=1, precision="bf16-mixed")
    t.fit(m, datamodule=TextClassificationDataModule(**tiny_data_kwargs, transfer_fraction=0.5))
    assert torch.isfinite(t.callback_metrics["train/loss"])
    assert any(not torch.equal(v, m.student.state_dict()[k]) for k, v in before.items())


def test_teacher_with_its_own_tokenizer(tiny_data_kwargs, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(" ".join(WORDS.values()).split()))]
    vocab.write_text("\n".join(words))
    teacher_dir = tmp_path / "teacher"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(teacher_dir)
    BertForSequenceClassification(
        BertConfig(
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=3,
        )
    ).save_pretrained(teacher_dir)
    m = DistillationModule(teacher=str(teacher_dir), student=tiny_bert(num_labels=3, layers=1))
    shared = TextClassificationDataModule(**tiny_data_kwargs)
    with pytest.raises(
        ValueError, match="model.teacher: the tokenizer has 30522 tokens but the model's embeddings"
    ):
        trainer(max_steps=1).fit(m, datamodule=shared)
    separate = TextClassificationDataModule(**tiny_data_kwargs, teacher_tokenizer=str(teacher_dir))
    t = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    t.fit(m, datamodule=separate)
    assert t.global_step == 2 and "val/teacher_acc" in t.logged_metrics


def test_max_length_beyond_the_model_positions(tiny_teacher_dir, tiny_data_kwargs):
    data = TextClassificationDataModule(**{**tiny_data_kwargs, "max_length": 512})
    with pytest.raises(ValueError, match="data.max_length: 512 exceeds the 128 positions"):
        trainer(max_steps=1).fit(module(tiny_teacher_dir), datamodule=data)

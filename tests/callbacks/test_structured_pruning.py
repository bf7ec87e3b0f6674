import json

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig
from transformers import BertConfig, BertForSequenceClassification

from compress.callbacks.structured_pruning import StructuredPruning, load_pruned_checkpoint
from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule, TaskModule
from compress.peft import StudentFromTeacher
from compress.sparsity.structured import structure_of
from tests.compress.modules.test_distillation import StopAfterEpochs
from tests.conftest import VOCAB


def student(seed: int = 0) -> BertForSequenceClassification:
    """A tiny 3-label BERT with 4 heads of 8 and 64 FFN channels, no dropout (deterministic runs)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def trainer(root=None, **kwargs) -> Trainer:
    defaults = dict(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    return Trainer(**{**defaults, **kwargs}, default_root_dir=root)


class Recorder(Callback):
    """Per training batch, after any pruning: step, structure, lr, whether the optimizer holds the model."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = {id(p) for p in pl_module.parameters() if p.requires_grad}
        structure = structure_of(pl_module)
        self.rows.append(
            {
                "step": trainer.global_step,
                "heads": structure.heads,
                "channels": structure.channels,
                "lr": optimizer.param_groups[0]["lr"],
                "optimizer_holds_model": held == trainable,
                "weights": {k: v.clone() for k, v in pl_module.state_dict().items()},
            }
        )


def fit(module, data_kwargs, callbacks, root=None, ckpt_path=None, **kwargs) -> Trainer:
    t = trainer(root, callbacks=callbacks, **kwargs)
    t.fit(module, datamodule=TextClassificationDataModule(**data_kwargs), ckpt_path=ckpt_path)
    return t


@pytest.mark.parametrize(
    "adapter", [None, LoraConfig(r=4, target_modules=["query", "value"])], ids=["full", "lora"]
)
def test_prunes_at_the_step_and_training_goes_on(tiny_data_kwargs, adapter):
    seed_everything(0)
    module = TaskModule(student(), learning_rate=1e-2, warmup_ratio=0.4, adapter=adapter)
    recorder = Recorder()
    fit(
        module,
        tiny_data_kwargs,
        [StructuredPruning(head_ratio=0.5, ffn_ratio=0.5, at_step=2), recorder],
        max_steps=5,
    )
    assert [r["heads"] for r in recorder.rows] == [[4, 4]] * 2 + [[2, 2]] * 3
    assert [r["channels"] for r in recorder.rows] == [[64, 64]] * 2 + [[32, 32]] * 3
    assert all(r["optimizer_holds_model"] for r in recorder.rows)
    seed_everything(0)
    dense = Recorder()
    fit(
        TaskModule(student(), learning_rate=1e-2, warmup_ratio=0.4, adapter=adapter),
        tiny_data_kwargs,
        [dense],
        max_steps=5,
    )
    assert [r["lr"] for r in recorder.rows] == [r["lr"] for r in dense.rows]  # the schedule continues
    pruned, final = recorder.rows[2]["weights"], module.state_dict()
    changed = {k for k, v in pruned.items() if not torch.equal(v, final[k])}
    query = "model.bert.encoder.layer.0.attention.self.query"
    if adapter is None:
        assert f"{query}.weight" in changed
    else:  # the base stays frozen, the restarted adapters train
        query = query.replace("model.", "model.base_model.model.", 1)
        assert f"{query}.lora_B.default.weight" in changed and f"{query}.base_layer.weight" not in changed
        assert not pruned[f"{query}.lora_B.default.weight"].any()


def test_rounds_reach_the_targets_at_the_last_step(tiny_data_kwargs):
    module = TaskModule(student(), learning_rate=1e-3)
    pruning = StructuredPruning(head_ratio=0.5, ffn_ratio=0.5, start_step=1, end_step=5, num_steps=3)
    recorder = Recorder()
    fit(module, tiny_data_kwargs, [pruning, recorder], max_steps=7)
    assert pruning.steps == [1, 3, 5]
    assert [r["heads"][0] for r in recorder.rows] == [4, 4, 4, 3, 3, 2, 2]
    assert [r["channels"][0] for r in recorder.rows] == [64, 54, 54, 43, 43, 32, 32]
    assert [entry["layer"] for entry in pruning.history] == [0, 1, 0, 1, 0, 1]
    assert json.loads(json.dumps(pruning.state_dict())) == pruning.state_dict()


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_resume_matches_an_uninterrupted_run(tiny_data_kwargs, tmp_path, importance):
    def run(root, ckpt_path=None, callbacks=()):
        seed_everything(7)
        module = TaskModule(student(), learning_rate=1e-2, warmup_ratio=0.2)
        pruning = StructuredPruning(head_ratio=0.5, ffn_ratio=0.5, importance=importance, steps=[3, 8, 13])
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        t = fit(
            module,
            tiny_data_kwargs,
            [pruning, checkpoint, *callbacks],
            root,
            ckpt_path,
            max_epochs=4,
            enable_checkpointing=True,
        )
        return module, pruning, t

    straight, straight_pruning, _ = run(tmp_path / "a")
    _, stopped, stopped_trainer = run(tmp_path / "b", callbacks=[StopAfterEpochs(2)])
    assert (
        stopped_trainer.global_step == 10 and stopped.rounds_done == 2
    )  # the third round comes after resume
    seed_everything(123)  # the resumed run must not depend on the process's RNG at resume time
    resumed, resumed_pruning, t = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert t.global_step == 20 and resumed_pruning.history == straight_pruning.history
    assert structure_of(resumed).heads == [2, 2]
    expected = straight.state_dict()
    assert resumed.state_dict().keys() == expected.keys()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_load_from_checkpoint_needs_the_replay(tiny_data_kwargs, tmp_path):
    module = TaskModule(student(), learning_rate=1e-3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    pruning = StructuredPruning(head_ratio=0.5, ffn_ratio=0.25, at_step=1)
    fit(module, tiny_data_kwargs, [pruning, checkpoint], max_steps=2, enable_checkpointing=True)
    path = str(tmp_path / "last.ckpt")
    with pytest.raises(RuntimeError, match="size mismatch"):
        TaskModule.load_from_checkpoint(path, model=student(seed=3))
    loaded = load_pruned_checkpoint(TaskModule, path, model=student(seed=3))
    assert type(loaded) is TaskModule and structure_of(loaded) == structure_of(module)
    for key, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    data = TextClassificationDataModule(**tiny_data_kwargs)
    evaluation = trainer(callbacks=[StructuredPruning(head_ratio=0.5, ffn_ratio=0.25, at_step=1)])
    trained = evaluation.test(module, datamodule=data, ckpt_path=path, verbose=False)  # already pruned
    fresh = TaskModule(student(seed=4), learning_rate=1e-3)
    assert evaluation.test(fresh, datamodule=data, ckpt_path=path, verbose=False) == trained
    assert structure_of(fresh) == structure_of(module)


def test_the_teacher_is_never_pruned(tiny_teacher_dir, tiny_data_kwargs):
    module = DistillationModule(
        teacher=tiny_teacher_dir, student=StudentFromTeacher(layers=[0, 2]), learning_rate=1e-3
    )
    teacher = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    fit(module, tiny_data_kwargs, [StructuredPruning(head_ratio=0.5, ffn_ratio=0.5)], max_steps=2)
    assert structure_of(module.student).heads == [1, 1] and module.student.config.num_attention_heads == 1
    assert structure_of(module.teacher).heads == [2] * 4 and module.teacher.config.num_attention_heads == 2
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in teacher.items())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(head_ratio=1.0), r"StructuredPruning.head_ratio: 1.0 must be in \[0, 1\)"),
        (dict(ffn_ratio=-0.5), r"StructuredPruning.ffn_ratio: -0.5 must be in \[0, 1\)"),
        (dict(importance="l1"), r"StructuredPruning.importance: 'l1' must be"),
        (dict(at_step=3, steps=[4]), r"give at_step, steps, or start_step/end_step/num_steps, not several"),
        (dict(start_step=2, end_step=4), r"start_step/end_step/num_steps: \(2, 4, None\) must all be set"),
        (dict(start_step=0, end_step=2, num_steps=5), r"StructuredPruning.steps: \[0, 0, 1, 2, 2\] must be"),
        (dict(steps=[5, 3]), r"StructuredPruning.steps: \[5, 3\] must be distinct, increasing"),
        (dict(at_step=-1), r"StructuredPruning.steps: \[-1\] must be"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StructuredPruning(**{"head_ratio": 0.5, **kwargs})


@pytest.mark.parametrize(
    "pruning, message",
    [
        (
            StructuredPruning(head_ratio=0.2, ffn_ratio=0.01),
            r"head_ratio=0.2 and ffn_ratio=0.01 remove nothing from layers with heads \[4, 4\]",
        ),
        (
            StructuredPruning(head_ratio=0.5, module="nope"),
            r"StructuredPruning.module: .* no submodule 'nope'",
        ),
    ],
    ids=["nothing", "module"],
)
def test_errors_come_before_training(tiny_data_kwargs, pruning, message):
    recorder = Recorder()
    with pytest.raises(ValueError, match=message):
        fit(TaskModule(student(), learning_rate=1e-3), tiny_data_kwargs, [pruning, recorder], max_steps=2)
    assert recorder.rows == []

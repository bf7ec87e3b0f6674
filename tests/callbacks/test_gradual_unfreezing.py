import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from compress.callbacks.gradual_unfreezing import GradualUnfreezing
from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule, TaskModule
from compress.peft import StudentFromTeacher
from tests.compress.modules.test_distillation import StopAfterEpochs
from tests.conftest import tiny_bert

LAYERS = "model.bert.encoder.layer"


def trainer(root=None, **kwargs) -> Trainer:
    defaults = dict(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    return Trainer(**{**defaults, **kwargs}, default_root_dir=root)


def layer_state(module: LightningModule, i: int) -> dict[str, torch.Tensor]:
    prefix = f"{LAYERS}.{i}."
    return {k: v.clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


class Recorder(Callback):
    """At each epoch start (after the unfreezing): trainable layers, param groups, layer weights."""

    def __init__(self) -> None:
        self.trainable_layers: list[list[int]] = []
        self.groups: list[int] = []
        self.weights: list[list[dict]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        layers = pl_module.model.bert.encoder.layer
        self.trainable_layers.append(
            [i for i, layer in enumerate(layers) if layer.output.dense.weight.requires_grad]
        )
        self.groups.append(len(trainer.optimizers[0].param_groups))
        self.weights.append([layer_state(pl_module, i) for i in range(len(layers))])


def test_layers_unfreeze_top_down_one_per_epoch(tiny_data_kwargs):
    seed_everything(0)
    module = TaskModule(tiny_bert(num_labels=3, layers=4), learning_rate=1e-3)
    recorder = Recorder()
    t = trainer(max_epochs=3, callbacks=[GradualUnfreezing(), recorder])
    t.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    assert recorder.trainable_layers == [[3], [2, 3], [1, 2, 3]]
    assert recorder.groups == [4, 6, 8]  # two groups per layer: weights, then biases and norms
    final = [layer_state(module, i) for i in range(4)]
    for epoch, before in enumerate(recorder.weights):
        after = recorder.weights[epoch + 1] if epoch + 1 < len(recorder.weights) else final
        for i in range(4):
            frozen = i not in recorder.trainable_layers[epoch]
            unchanged = all(torch.equal(v, after[i][k]) for k, v in before[i].items())
            assert unchanged == frozen, (epoch, i)
    assert (
        not module.model.bert.embeddings.word_embeddings.weight.requires_grad
    )  # the last stage, not reached
    assert (
        module.model.classifier.weight.requires_grad and module.model.bert.pooler.dense.weight.requires_grad
    )


def test_new_groups_copy_group_zero_and_follow_the_schedule(tiny_data_kwargs):
    class Lrs(Callback):
        def __init__(self) -> None:
            self.rows: list[list[float]] = []

        def on_train_batch_end(self, trainer, *args) -> None:
            groups = trainer.optimizers[0].param_groups
            self.rows.append([g["lr"] for g in groups])
            assert [g["weight_decay"] for g in groups] == [0.05, 0.0] + [0.05, 0.0] * ((len(groups) - 2) // 2)

    module = TaskModule(tiny_bert(num_labels=3, layers=2), learning_rate=1e-3, weight_decay=0.05)
    lrs = Lrs()
    t = trainer(max_epochs=2, limit_train_batches=2, callbacks=[GradualUnfreezing(lr_factor=0.5), lrs])
    t.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    head = [row[0] for row in lrs.rows]
    assert head == sorted(head, reverse=True) and head[0] > head[-1]  # linear decay
    for row in lrs.rows:  # the new groups follow group 0's decay
        assert all(lr == pytest.approx(0.5 * row[0]) for lr in row[2:])
    optimizer = t.optimizers[0]
    assert [g.get("unfrozen") for g in optimizer.param_groups] == [None, None] + [
        f"bert.encoder.layer.{i}" for i in (1, 1, 0, 0)
    ]


def test_start_epoch_embeddings_and_adapter_parameters(tiny_data_kwargs):
    from peft import LoraConfig

    module = TaskModule(tiny_bert(num_labels=3, layers=1), learning_rate=1e-3, adapter=LoraConfig(r=2))
    before = {n for n, p in module.model.named_parameters() if p.requires_grad}
    recorder = []

    class Trainable(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            recorder.append({n for n, p in pl_module.model.named_parameters() if p.requires_grad})

    unfreezing = GradualUnfreezing(start_epoch=1, epochs_per_layer=2)
    t = trainer(max_epochs=4, limit_train_batches=1, limit_val_batches=0, callbacks=[unfreezing, Trainable()])
    t.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    layer = {n for n in before if ".layer.0." in n}
    assert layer and all("lora_" in n for n in layer)  # only what was trainable before unfreezes
    head = before - layer
    assert recorder == [head, head | layer, head | layer, head | layer]
    assert [unfreezing.stage_at(e) for e in range(5)] == [0, 1, 1, 2, 2]


def test_embeddings_unfreeze_last(tiny_data_kwargs):
    module = TaskModule(tiny_bert(num_labels=3, layers=1), learning_rate=1e-3)
    t = trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=0, callbacks=[GradualUnfreezing()])
    t.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    assert all(p.requires_grad for p in module.model.parameters())
    assert t.optimizers[0].param_groups[-1]["unfrozen"] == "embeddings"

    module = TaskModule(tiny_bert(num_labels=3, layers=2), learning_rate=1e-3)
    unfreezing = GradualUnfreezing(freeze_embeddings=False)
    t = trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[unfreezing])
    t.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    assert module.model.bert.embeddings.word_embeddings.weight.requires_grad
    assert not module.model.bert.encoder.layer[0].output.dense.weight.requires_grad


def test_resume_matches_an_uninterrupted_run(tiny_data_kwargs, tmp_path):
    def run(root, ckpt_path=None, callbacks=()):
        seed_everything(7)
        module = TaskModule(tiny_bert(num_labels=3, layers=4), learning_rate=1e-3)
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        t = trainer(
            root,
            max_epochs=4,
            enable_checkpointing=True,
            callbacks=[GradualUnfreezing(lr_factor=0.5), checkpoint, *callbacks],
        )
        t.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs), ckpt_path=ckpt_path)
        return module, t

    straight, straight_trainer = run(tmp_path / "a")
    _, stopped = run(tmp_path / "b", callbacks=[StopAfterEpochs(2)])
    assert stopped.global_step == 10 and len(stopped.optimizers[0].param_groups) == 6
    seed_everything(123)  # the resumed run must not depend on the process's RNG at resume time
    resumed, t = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert t.global_step == 20
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    groups = [{k: v for k, v in g.items() if k != "params"} for g in t.optimizers[0].param_groups]
    assert groups == [
        {k: v for k, v in g.items() if k != "params"} for g in straight_trainer.optimizers[0].param_groups
    ]
    assert all(p.requires_grad for n, p in resumed.model.named_parameters() if "encoder.layer." in n)


def test_distillation_student_unfreezes(tiny_teacher_dir, tiny_data_kwargs):
    module = DistillationModule(
        teacher=tiny_teacher_dir, student=StudentFromTeacher(layers=[0, 2]), learning_rate=1e-3
    )
    teacher = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    t = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[GradualUnfreezing()])
    t.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    layers = module.student.bert.encoder.layer
    assert [layer.output.dense.weight.requires_grad for layer in layers] == [False, True]
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in teacher.items())


class Holder(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_bert()


def test_the_model_found_by_structure_or_named(tiny_data_kwargs):
    holder = Holder()
    holder.big_model = tiny_bert().requires_grad_(False)  # a frozen teacher beside it, any name
    assert GradualUnfreezing()._model(holder) is holder.net
    assert GradualUnfreezing(module="big_model")._model(holder) is holder.big_model
    with pytest.raises(ValueError, match=r"GradualUnfreezing.module: Holder has no submodule 'model'"):
        GradualUnfreezing(module="model")._model(holder)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs_per_layer=0), r"epochs_per_layer: 0 must be an integer >= 1"),
        (dict(epochs_per_layer=1.5), r"epochs_per_layer: 1.5 must be an integer >= 1"),
        (dict(start_epoch=-1), r"start_epoch: -1 must be an integer >= 0"),
        (dict(lr_factor=0), r"lr_factor: 0 must be > 0"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=rf"GradualUnfreezing.{message}"):
        GradualUnfreezing(**kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (step + 1)),
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=20),
        lambda opt: torch.optim.lr_scheduler.SequentialLR(
            opt,
            [
                torch.optim.lr_scheduler.LinearLR(opt, 0.1, total_iters=3),
                torch.optim.lr_scheduler.StepLR(opt, 2),
            ],
            [3],
        ),
    ],
    ids=["lambda", "onecycle", "sequential"],
)
def test_schedulers_grow_with_the_new_groups(make):
    """Unit check of the scheduler growth (Lightning-free): the new group follows group 0 times lr_factor."""
    from compress.callbacks.param_groups import grow_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9)
    scheduler = make(optimizer)
    optimizer.step()
    scheduler.step()
    group = {
        k: v * 0.5 if k.endswith("lr") else v for k, v in optimizer.param_groups[0].items() if k != "params"
    }
    optimizer.add_param_group({**group, "params": [torch.nn.Parameter(torch.ones(2))]})
    grow_scheduler(scheduler, 2, 0.5)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        first, second = (g["lr"] for g in optimizer.param_groups)
        assert second == pytest.approx(0.5 * first)

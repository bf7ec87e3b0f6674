"""The optimizer and schedule: fused AdamW with warm-up by default, your own through `optimizer` /
`lr_scheduler` (Python callables or YAML class paths), never stored in checkpoints."""

from pathlib import Path

import pytest
import torch

from compress.commands.lightning_cli import CompressCLI
from compress.data import TextClassificationDataModule
from compress.modules import DistillationModule, TaskModule
from compress.modules.optim import Optimization
from tests.conftest import quick_trainer, tiny_bert

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "examples" / "distill_custom_optimizer.yaml"


def test_the_default_is_fused_adamw_without_decay_on_biases_and_norms():
    model = tiny_bert(layers=1)
    optimizer = Optimization(learning_rate=1e-3, weight_decay=0.1).optimizer_for(model.named_parameters())
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"]
    decayed, flat = optimizer.param_groups
    assert (decayed["weight_decay"], flat["weight_decay"]) == (0.1, 0.0)
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in flat["params"])
    assert len(decayed["params"]) + len(flat["params"]) == len(list(model.parameters()))


def test_a_constant_schedule_warms_up_like_transformers(tiny_data_kwargs):
    module = TaskModule(tiny_bert(num_labels=3, layers=1), warmup_ratio=0.5, lr_schedule="constant")
    trainer = quick_trainer(steps=4)
    trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert [schedule.lr_lambdas[0](step) for step in range(4)] == [0.0, 0.5, 1.0, 1.0]


def test_python_callables_choose_optimizer_and_schedule_and_stay_out_of_checkpoints(
    tiny_data_kwargs, tmp_path
):
    module = TaskModule(
        tiny_bert(num_labels=3, layers=1),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.5),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
    )
    trainer = quick_trainer(tmp_path, steps=3)
    trainer.fit(module, datamodule=TextClassificationDataModule(**tiny_data_kwargs))
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD and [g["weight_decay"] for g in optimizer.param_groups] == [
        0,
        0,
    ]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)  # stepped every optimizer step
    path = trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(path, weights_only=True)
    assert not {"optimizer", "lr_scheduler"} & set(checkpoint["hyper_parameters"])
    loaded = TaskModule.load_from_checkpoint(path, model=tiny_bert(num_labels=3, layers=1))
    assert loaded.optimization.optimizer is None  # the defaults: pass your callables again


def _cli(subcommand, teacher, csv, tokenizer, root, *extra):
    return CompressCLI(
        args=[
            subcommand,
            "--config", str(EXAMPLE), f"--model.init_args.teacher={teacher}",
            "--model.init_args.student.init_args.layers=[0, 2]",
            f"--data.source={csv}", f"--data.tokenizer={tokenizer}", "--data.text_column=review",
            "--data.label_column=sentiment", "--data.test_size=12", "--data.val_size=12",
            "--data.max_train_examples=null", "--data.max_length=16", "--data.batch_size=8",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
            "--trainer.max_epochs=5", f"--trainer.default_root_dir={root}", *extra,
        ],
    )  # fmt: skip


def test_an_optimizer_from_yaml_trains_resumes_and_its_checkpoint_loads_safely(
    tiny_teacher_dir, tiny_csv, tokenizer_dir, tmp_path
):
    cli = _cli("fit", tiny_teacher_dir, tiny_csv, tokenizer_dir, tmp_path / "a", "--trainer.max_steps=2")
    optimizer, schedule = cli.trainer.optimizers[0], cli.trainer.lr_scheduler_configs[0]
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["nesterov"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]
    assert type(schedule.scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR
    assert schedule.interval == "step"

    path = cli.trainer.checkpoint_callback.best_model_path
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert "optimizer" not in hparams and hparams["loss"]["class_path"] == "compress.distill.losses.KDLoss"
    assert DistillationModule.load_from_checkpoint(path).student.config.num_hidden_layers == 2
    resumed = _cli(
        "fit",
        tiny_teacher_dir,
        tiny_csv,
        tokenizer_dir,
        tmp_path,
        "--trainer.max_steps=3",
        f"--ckpt_path={path}",
    )
    assert resumed.trainer.global_step == 3
    assert type(resumed.trainer.optimizers[0]) is torch.optim.SGD

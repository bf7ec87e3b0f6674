import json
from pathlib import Path

import pytest
import yaml

from compress.commands import main
from compress.commands.lightning_cli import CompressCLI
from compress.commands.pipeline import load_pipeline

ALL_CONFIGS = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").rglob("*.yaml"))
PIPELINES = [p for p in ALL_CONFIGS if p.parent.name == "pipelines"]
CONFIGS = [p for p in ALL_CONFIGS if p.parent.name not in ("multitask", "pipelines")]  # LightningCLI configs


def test_multitask_configs_parse(capsys):
    for config in (p for p in ALL_CONFIGS if p.parent.name == "multitask"):
        with pytest.raises(SystemExit) as exit_info:
            main(["multitask", "--config", str(config), "--print_config"])
        assert exit_info.value.code == 0 and "tasks:" in capsys.readouterr().out


@pytest.mark.parametrize("config", PIPELINES, ids=lambda p: p.name)
def test_pipeline_configs_parse_stage_by_stage(config, tmp_path, capsys):
    assert config.read_text().startswith("#"), "each config starts with a comment saying how to run it"
    pipeline = load_pipeline(config, tmp_path)
    for stage in pipeline.stages:
        if stage.kind in (
            "fit",
            "multitask",
        ):  # the stage bodies are `compress fit` / `compress multitask` configs
            stage_file = tmp_path / f"{stage.name}.yaml"
            stage_file.write_text(yaml.safe_dump(stage.settings))
            with pytest.raises(SystemExit) as exit_info:
                main([stage.kind, "--config", str(stage_file), "--print_config"])
            assert exit_info.value.code == 0, stage.name
    assert "tasks:" in capsys.readouterr().out or all(s.kind != "multitask" for s in pipeline.stages)


def test_there_are_configs():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parent.parent)))
def test_every_config_parses(config, capsys):
    first_line = config.read_text().splitlines()[0]
    assert first_line.startswith("#"), "each config starts with a comment saying how to run it"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("compress.modules.")
    assert printed["data"]["class_path"].startswith("compress.data.")
    assert printed["data"]["init_args"]["source"]


def test_unknown_config_key_is_rejected(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: compress.modules.TaskModule\n  init_args:\n    learning_rat: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), "--print_config"])
    assert exit_info.value.code != 0
    assert "learning_rat" in capsys.readouterr().err


def test_fit_and_test_from_yaml_on_a_tiny_teacher(tiny_teacher_dir, tiny_csv, tmp_path):
    args = [
        "--config",
        "configs/tiny/distill.yaml",
        f"--model.init_args.teacher={tiny_teacher_dir}",
        f"--data.source={tiny_csv}",
        "--data.text_column=review",
        "--data.label_column=sentiment",
        "--data.test_size=12",
        "--data.val_size=12",
        "--data.max_train_examples=null",
        "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = CompressCLI(args=args, run=False)
    assert cli.model.hparams.num_labels == 3  # linked from the data
    assert cli.model.student.config.num_hidden_layers == 2
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert 0.0 <= metrics["test/acc"] <= 1.0 and cli.trainer.global_step == 2


def test_the_progress_bar_redraws_every_few_steps_unless_set_or_off(tiny_teacher_dir, tiny_csv, tmp_path):
    from lightning.pytorch.callbacks import TQDMProgressBar

    from compress.commands.lightning_cli import PROGRESS_REFRESH

    base = ["--config", "configs/tiny/distill.yaml", f"--model.init_args.teacher={tiny_teacher_dir}"]
    base += [f"--data.source={tiny_csv}", "--data.text_column=review", "--data.label_column=sentiment"]
    base += ["--data.test_size=12", "--data.val_size=12", f"--trainer.default_root_dir={tmp_path}"]
    bar = CompressCLI(args=base, run=False).trainer.progress_bar_callback
    assert isinstance(bar, TQDMProgressBar) and bar.refresh_rate == PROGRESS_REFRESH
    assert (
        CompressCLI(
            args=[*base, "--trainer.enable_progress_bar=false"], run=False
        ).trainer.progress_bar_callback
        is None
    )
    own = '{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar", "init_args": {"refresh_rate": 3}}'
    mine = CompressCLI(args=[*base, f"--trainer.callbacks=[{own}]"], run=False).trainer.progress_bar_callback
    assert mine.refresh_rate == 3


def test_model_alias_resolves_to_the_offline_folder():
    from compress.assets import resolve_model_source

    folder = Path(resolve_model_source("minilm-l6"))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="not a folder"):
        resolve_model_source("./no/such/folder")


@pytest.mark.parametrize(("subcommand", "metric"), [("validate", "val/acc"), ("test", "test/acc")])
def test_validate_and_test_subcommands(subcommand, metric, tiny_teacher_dir, tiny_csv, tmp_path):
    cli = CompressCLI(args=[
        subcommand, "--config", "configs/tiny/distill.yaml", f"--model.init_args.teacher={tiny_teacher_dir}",
        f"--data.source={tiny_csv}", "--data.text_column=review", "--data.label_column=sentiment",
        "--data.test_size=12", "--data.val_size=12", "--data.max_train_examples=null",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    assert 0.0 <= float(cli.trainer.callback_metrics[metric]) <= 1.0


def test_fit_the_tiny_causal_lm_config(tmp_path):
    cli = CompressCLI(
        args=["--config", "configs/tiny/distill_lm.yaml", f"--trainer.default_root_dir={tmp_path}"], run=False
    )
    assert type(cli.datamodule).__name__ == "LanguageModelingDataModule" and cli.model.task == "causal_lm"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 5 and "val/kl" in cli.trainer.callback_metrics


def test_prune_then_recover_the_tiny_llm_from_yaml(tmp_path, capsys):
    pruned = tmp_path / "pruned"
    main(["prune", "--model", "tiny-llama", "--output", str(pruned), "--remove_layers", "1",
          "--method", "wanda", "--num_sequences", "8", "--eval_batches", "1"])  # fmt: skip
    record = json.loads((pruned / "pruning.json").read_text())
    assert record["structure"]["num_hidden_layers"] == 3 and record["sparsity"] == 0.5
    assert "[prune]" in capsys.readouterr().out
    cli = CompressCLI(args=["--config", "configs/tiny/recover_lm.yaml", f"--model.init_args.student={pruned}",
                            f"--trainer.default_root_dir={tmp_path}"], run=False)  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 5 and "val/kl" in cli.trainer.callback_metrics
    weight = cli.model.student.get_parameter("model.layers.0.mlp.up_proj.weight")
    assert float((weight == 0).float().mean()) == 0.5  # KeepSparsity held Wanda's zeros


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "Nothing to prune"),
        (["--method", "wanda", "--sparsity", "0.3", "--pattern", "2:4"], "contradicts pattern"),
        (["--ffn_ratio", "1.5"], "ffn_ratio must be in"),
    ],
)
def test_prune_refuses_bad_settings_before_writing(tmp_path, extra, message):
    from compress.commands.prune import prune_model

    kwargs = {"model": "tiny-llama", "output": str(tmp_path / "out")}
    args = dict(zip([a.lstrip("-") for a in extra[::2]], extra[1::2], strict=True))
    typed = {k: (float(v) if k in ("sparsity", "ffn_ratio") else v) for k, v in args.items()}
    with pytest.raises(ValueError, match=message):
        prune_model(**kwargs, **typed, eval_batches=0)
    assert not (tmp_path / "out").exists()


def test_prune_refuses_an_output_that_holds_the_model_and_a_classifier(tmp_path, tiny_teacher_dir):
    from compress.assets import resolve_model_source
    from compress.commands.prune import prune_model

    source = resolve_model_source("tiny-llama")
    with pytest.raises(ValueError, match="holds model .*an input of this command"):
        prune_model("tiny-llama", str(source), ffn_ratio=0.5, overwrite=True)
    with pytest.raises(ValueError, match="not a causal language model"):
        prune_model(str(tiny_teacher_dir), str(tmp_path / "x"), ffn_ratio=0.5)

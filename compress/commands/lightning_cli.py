"""``compress fit | validate | test | predict``: LightningCLI over any LightningModule and DataModule.

The data defaults to `TextClassificationDataModule` (a config's ``data:`` settings are its init
arguments); ``data: {class_path: compress.data.LanguageModelingDataModule, init_args: ...}`` or any other
LightningDataModule replaces it.

Example:
    compress fit --config configs/examples/finetune_teacher.yaml
    compress fit --config configs/tiny/distill_lm.yaml --print_config
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI

from compress.commands.checkpoint_settings import check_checkpoint_settings
from compress.data import TextClassificationDataModule
from compress.safe_load import check_checkpoint_file

PROGRESS_REFRESH = 10  # steps between progress-bar redraws


class CompressCLI(LightningCLI):
    """LightningCLI over any LightningModule and LightningDataModule (``class_path`` in YAML); the data's
    class defaults to the text-classification one."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        default = f"{TextClassificationDataModule.__module__}.{TextClassificationDataModule.__name__}"
        parser.set_defaults({"data": {"class_path": default}})  # `data:` settings without class_path are its
        # The data knows the label count (None for language modelling); every module's num_labels follows it.
        parser.link_arguments("data.num_labels", "model.init_args.num_labels", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        settings = self.config[subcommand]
        # --ckpt_path reads tensors and plain data only: Lightning's default (None) unpickles an http(s) URL,
        # or any file under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD. `--weights_only false` opts in (trusted files).
        if "weights_only" in settings and settings["weights_only"] is None:
            settings["weights_only"] = True
        # Lightning reads --ckpt_path right after this: a missing or damaged file fails naming the setting.
        path = settings.get("ckpt_path")
        if path and "://" not in str(path):
            fix = "pass the .ckpt of an earlier run of this config, or leave --ckpt_path out to start afresh"
            checkpoint = check_checkpoint_file(path, "ckpt_path", fix)
            check_checkpoint_settings(path, checkpoint.get("hyper_parameters") or {}, settings.get("model"))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Lightning's default progress bar redraws at every step; every PROGRESS_REFRESH steps is as
        # informative and leaves the step time alone (bench/overhead.py). A progress bar of your own wins.
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = {**config.get("trainer", {}), **kwargs}
        given = list(trainer.get("callbacks") or [])
        if trainer.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in given
        ):
            kwargs["callbacks"] = [*given, TQDMProgressBar(refresh_rate=PROGRESS_REFRESH)]
        return super().instantiate_trainer(**kwargs)

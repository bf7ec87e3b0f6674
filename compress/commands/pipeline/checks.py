"""Every stage of a pipeline checked before the first one runs: a mistake in the last stage fails now, not
after the first ones trained.

Fit stages are parsed by their `compress fit` parser, multitask stages by `compress multitask`'s; a prune
stage needs the shared language-modelling data; a model, base or report entry that names a folder or file
of the user's (not a ``{stage}`` placeholder) must exist and be a readable model folder.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from jsonargparse import ArgumentError, ArgumentParser

from compress.commands.multitask import adapt_to_tasks
from compress.commands.multitask_settings import check_task_settings, check_trainer_keys, explained
from compress.commands.pipeline.config import PLACEHOLDER, Pipeline, Stage
from compress.commands.pipeline.fit import check_fit_settings
from compress.commands.pipeline.stages import language_modeling_settings
from compress.modules.loading import resolve_source

MODEL_SETTINGS = {"load": "model", "prune": "model", "export": "model", "multitask": "base"}


def check_stages(pipeline: Pipeline, overrides: list[str]) -> None:
    """Raises the first mistake found in any stage's settings, naming the setting."""
    for stage in pipeline.stages:
        where = f"stages.{stage.name}.{stage.kind}"
        if stage.kind == "fit":
            check_fit_settings(stage.name, stage.settings, overrides)
        if stage.kind == "prune":
            language_modeling_settings(pipeline.data, where)
        if stage.kind == "multitask":
            check_multitask_settings(stage.settings, where)
        _check_given_models(stage, where)


def check_multitask_settings(settings: dict, where: str) -> None:
    """`adapt_to_tasks` arguments, every task's data settings and the trainer's keys, named when wrong."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(adapt_to_tasks)
    try:
        parser.parse_object({**settings, "output": "unused", "overwrite": True})
    except ArgumentError as err:
        raise ValueError(f"{where}: {explained(err, inspect.signature(adapt_to_tasks).parameters)}") from err
    check_task_settings(settings.get("tasks"), f"{where}.tasks")
    check_trainer_keys(settings.get("trainer"), f"{where}.trainer")


def _check_given_models(stage: Stage, where: str) -> None:
    """Models named by the user (no placeholder) exist and are model folders or aliases."""
    settings = stage.raw if isinstance(stage.raw, dict) else {"model": stage.raw}
    key = MODEL_SETTINGS.get(stage.kind)
    value = settings.get(key) if key else None
    if isinstance(value, str) and not PLACEHOLDER.search(value):
        resolve_source(value, f"{where}.{key}")
    if stage.kind == "report":
        for name, path in (settings.get("models") or {}).items():
            if isinstance(path, str) and not PLACEHOLDER.search(path) and not Path(path).exists():
                raise ValueError(
                    f"{where}.models.{name}: {path} does not exist; give a model folder or .onnx file, or "
                    "'{stage}' for a stage's output"
                )

"""The settings of `compress multitask`, checked without building anything: every task's data settings
and the trainer's keys (the pipeline also checks the command's own arguments before its first stage runs),
so that a typo in the last task's settings fails before anything trains.

Example:
    >>> try:
    ...     check_task_settings({"news": {"source": "bbc_news", "max_lenght": 32}}, "adapt.tasks")
    ... except ValueError as refused:
    ...     print(str(refused).split("; accepted")[0])
    adapt.tasks.news: Option 'max_lenght' is not accepted; did you mean max_length?
"""

from __future__ import annotations

import difflib
import inspect
import re

from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch import Trainer

from compress.data import TextClassificationDataModule


def check_task_settings(tasks: dict[str, dict], where: str = "tasks") -> None:
    """Checks every task's `TextClassificationDataModule` settings (names and types) without loading data."""
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{where}: map task names to data settings, e.g. {{sst2: {{source: sst2}}}}.")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TextClassificationDataModule)
    accepted = inspect.signature(TextClassificationDataModule).parameters
    for name, settings in tasks.items():
        if not isinstance(settings, dict):
            raise ValueError(f"{where}.{name}: {settings!r} is not a mapping of data settings.")
        try:
            parser.parse_object({"tokenizer": "base", **settings})
        except ArgumentError as err:
            raise ValueError(f"{where}.{name}: {explained(err, accepted)}") from err


def check_trainer_keys(trainer: dict | None, where: str) -> None:
    """Every key of a ``trainer`` mapping is a `Trainer` argument (the nearest one is suggested)."""
    accepted = inspect.signature(Trainer).parameters
    for key in trainer or {}:
        if key not in accepted:
            raise ValueError(
                f"{where}.{key}: not a Trainer setting{_suggestion(key, accepted)}; use arguments "
                "of lightning.pytorch.Trainer (e.g. accelerator, precision, limit_train_batches)."
            )


def explained(err: ArgumentError, accepted) -> str:
    """jsonargparse's complaint, with the nearest accepted name for an unknown one and the list of names."""
    text = " ".join(str(err).split())
    unknown = re.search(r"Option '([^']+)' is not accepted", text)
    if unknown:
        names = ", ".join(sorted(accepted))
        return f"{text}{_suggestion(unknown[1], accepted)}; accepted: {names}"
    return text


def _suggestion(name: str, accepted) -> str:
    close = difflib.get_close_matches(name, list(accepted), n=1)
    return f"; did you mean {close[0]}?" if close else ""

"""``--ckpt_path`` against the configured model: a checkpoint written with other model settings is refused.

LightningCLI replaces the configured model's settings with the hyper-parameters stored in the checkpoint,
so a checkpoint of a 2-layer student resumed with a config for a 4-layer one would train the 2-layer one
without a word. `check_checkpoint_settings` compares the two first and names every setting that differs.
Settings the config leaves to a link or a default of None (``num_labels``, filled from the data) are not
compared; the weights themselves are checked against the built model when the checkpoint is loaded. A
checkpoint written outside the CLI (no model class stored) cannot be merged into a config and is refused.

Example:
    >>> from jsonargparse import Namespace
    >>> written = {"_class_path": "compress.modules.TaskModule", "learning_rate": 1e-3, "num_labels": 2}
    >>> configured = Namespace(class_path="compress.modules.TaskModule",
    ...                        init_args=Namespace(learning_rate=1e-3, num_labels=None))
    >>> settings_differences(written, configured)
    []
    >>> configured.init_args.learning_rate = 5e-4
    >>> settings_differences(written, configured)
    ['model.init_args.learning_rate: 0.001 in the checkpoint, 0.0005 in the config']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

BOOKKEEPING = ("_instantiator", "_class_path")  # what LightningCLI adds to the stored hyper-parameters


def check_checkpoint_settings(path: str | Path, stored: dict[str, Any], model: Namespace) -> None:
    """Refuses the checkpoint at ``path``, whose hyper-parameters are ``stored``, when its model class or
    settings differ from the configured ``model``."""
    if stored and "_class_path" not in stored:
        raise ValueError(
            f"ckpt_path: {path} was written outside `compress fit` (its hyper-parameters name no model "
            "class), and LightningCLI cannot merge them into the config; resume it in Python with "
            "Trainer.fit(module, ckpt_path=...), or leave --ckpt_path out to start afresh"
        )
    differences = settings_differences(stored, model)
    if differences:
        raise ValueError(
            f"ckpt_path: {path} was written with other model settings than the config's: "
            + "; ".join(differences)
            + ". Resume with the config it was written with (the config.yaml beside its run's checkpoints), "
            "or leave --ckpt_path out to start afresh"
        )


def settings_differences(stored: dict[str, Any], model: Namespace) -> list[str]:
    """One line per model setting that the checkpoint and the config give differently."""
    if not stored or not isinstance(model, Namespace) or "class_path" not in model:
        return []
    written = stored.get("_class_path")
    if written and written != model.class_path:
        return [f"model.class_path: {written} in the checkpoint, {model.class_path} in the config"]
    configured = _plain(model.get("init_args") or Namespace())
    compared = [key for key in stored if key not in BOOKKEEPING and configured.get(key) is not None]
    return [
        f"model.init_args.{key}: {_plain(stored[key])!r} in the checkpoint, {configured[key]!r} in the config"
        for key in compared
        if not same(_plain(stored[key]), configured[key])
    ]


def same(stored: Any, configured: Any) -> bool:
    """Equal settings in either form: ``{class_path, init_args}`` or the init arguments alone, and a class
    by any import path (``compress.distill.KDLoss`` is ``compress.distill.losses.KDLoss``)."""
    if isinstance(stored, dict) and isinstance(configured, dict):
        if "class_path" in stored and "class_path" in configured:
            return _name(stored["class_path"]) == _name(configured["class_path"]) and same(
                stored.get("init_args") or {}, configured.get("init_args") or {}
            )
        if "class_path" in stored or "class_path" in configured:  # one side gives its init arguments only
            return same(_init_args(stored), _init_args(configured))
        return all(same(stored.get(k), configured.get(k)) for k in set(stored) | set(configured))
    return stored == configured


def _init_args(setting: dict) -> dict:
    return (setting.get("init_args") or {}) if "class_path" in setting else setting


def _name(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _plain(value: Any) -> Any:
    """Plain JSON data (namespaces as dicts, tuples as lists), so that equal settings compare equal."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))

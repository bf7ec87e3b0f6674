"""Settings objects as plain data and back: ``{"class_path": ..., "init_args": {...}}``.

Checkpoints keep init arguments in this form: plain data, so ``torch.load(weights_only=True)`` reads them,
and the form a LightningCLI YAML uses. `from_stored` rebuilds the object through jsonargparse, which checks
the class against the type the setting expects (a checkpoint cannot name any other class) and the
arguments against its signature. Plain torch/peft code uses it too: it needs no Lightning.

Example:
    >>> from compress.distill import KDLoss
    >>> from compress.stored import from_stored, to_stored
    >>> stored = to_stored(KDLoss(alpha=0.3))
    >>> stored["class_path"]
    'compress.distill.losses.KDLoss'
    >>> stored["init_args"]
    {'alpha': 0.3, 'temperature': 2.0, 'divergence': 'forward_kl', 'beta': 0.5}
    >>> from_stored(stored, KDLoss, "model.loss").alpha
    0.3
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import asdict, fields, is_dataclass
from enum import Enum
from typing import Any


def is_stored(value: Any) -> bool:
    """Whether ``value`` is the stored form of an object."""
    return isinstance(value, dict) and "class_path" in value


def to_stored(value: Any, init_args: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The stored form of ``value``, or None when its init arguments are not plain data.

    The init arguments are a dataclass's init fields or, for other classes, the attributes named like the
    parameters of ``__init__`` (scikit-learn's ``get_params`` convention); ``init_args`` replaces them when
    the class has its own serialisation (e.g. peft's ``to_dict``). Sets become sorted lists, enums values.
    """
    if init_args is None:
        init_args = _init_args(value)
    if init_args is None:
        return None
    try:
        plain = json.loads(json.dumps(init_args, default=_plain))
    except (TypeError, ValueError):  # a tensor, a module, ...: not plain data
        return None
    kind = type(value)
    return {"class_path": f"{kind.__module__}.{kind.__qualname__}", "init_args": plain}


def from_stored(value: Any, kind: Any, field: str) -> Any:
    """``value`` itself, or the object its stored form describes, which must be of the type hint ``kind``.

    Only classes of modules that are already imported are rebuilt: a checkpoint's data never makes Python
    import a module (its top-level code would run), as Lightning's checkpoint instantiator also requires.
    """
    if not is_stored(value):
        return value
    from jsonargparse import ArgumentError, ArgumentParser  # here: its import cost only where rebuilt

    path = value["class_path"]
    if _imported_object(path) is None:
        raise ValueError(
            f"{field}: the stored {path!r} is not a class of an imported module; import it before loading, "
            f"or pass {field.rsplit('.', 1)[-1]} again (e.g. to load_from_checkpoint)"
        )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=kind)
    try:
        parsed = parser.parse_object({"value": value})
    except ArgumentError as err:
        raise ValueError(f"{field}: cannot rebuild the stored {path!r}: {err}") from err
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # the name before 4.49
    return instantiate(parsed).value


def _init_args(value: Any) -> dict[str, Any] | None:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value) if f.init}
    try:
        parameters = list(inspect.signature(type(value)).parameters.values())
    except (TypeError, ValueError):
        return None
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if any(p.kind in variadic or not hasattr(value, p.name) for p in parameters):
        return None
    return {p.name: getattr(value, p.name) for p in parameters}


def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):  # unordered: sorted, so equal sets store alike
        try:
            return sorted(value)
        except TypeError:  # mixed types
            return sorted(value, key=repr)
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not plain data")


def _imported_object(path: str) -> Any:
    """The object ``path`` names, looked up from the longest imported module prefix without importing."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        found = module
        for name in parts[cut:]:
            found = getattr(found, name, None)
        return found if isinstance(found, type) else None
    return None

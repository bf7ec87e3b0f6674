"""The pipeline YAML: named stages in order, each of one kind, wired by ``{stage}`` placeholders.

```yaml
output: runs/default            # optional; default runs/<config file name>
data: {source: rotten_tomatoes, ...}   # shared settings merged under every fit stage's `data`
stages:
  teacher: {fit: {model: ..., trainer: ...}}           # a `compress fit` config body
  student: {fit: {model: {init_args: {teacher: "{teacher}"}}}}
  adapt: {multitask: {base: "{student}", tasks: ...}}  # `compress multitask` arguments
  export: {export: {model: "{student}", int8: true}}
  report: {report: {models: [teacher, student, export]}}
```

``{name}`` in any string is replaced by the output of stage ``name``: the model folder
``<output>/stages/<name>/model`` of a fit or load stage, the folder ``<output>/stages/<name>`` of a
multitask stage (``base/`` and ``adapters/<task>/``), ``<output>/<name>`` for an export stage. It also makes
that stage an input of this one: a changed upstream stage reruns everything downstream.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("fit", "load", "prune", "multitask", "export", "report")
KEYS = {  # the settings an export or report stage accepts (fit and multitask are checked by their parsers)
    "export": {"model": str, "tokenizer": str, "trim_vocabulary": bool, "onnx": bool, "int8": bool,
               "adapters": str, "gguf": bool, "gguf_types": list, "gguf_reference": str},
    "report": {"models": dict, "reference": str, "rounds": int, "threads": int, "eval_batches": int},
    "prune": {"model": str, "data": dict, "num_sequences": int, "remove_layers": int, "layers": list,
              "ffn_ratio": float, "head_ratio": float, "head_unit": str, "hidden_ratio": float,
              "block_importance": str, "method": str, "sparsity": float, "pattern": str,
              "eval_batches": int, "device": str},
}  # fmt: skip
REQUIRED = {  # setting -> the hint in its error
    "export": ("model", "which model to export, e.g. '{student}'"),
    "prune": ("model", "which causal LM to prune, e.g. '{teacher}'"),
    "report": ("models", "map display names to model folders or .onnx files, e.g. {teacher: '{teacher}'}"),
}
TYPE_NAMES = {bool: "true or false", str: "a string", int: "a whole number", dict: "a mapping",
              float: "a number", list: "a list"}  # fmt: skip
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Stage:
    """One stage: its name, kind, settings (placeholders resolved), the stages it reads from and its settings
    as written (placeholders kept: what its fingerprint holds, so a run fingerprints alike in any folder)."""

    name: str
    kind: str
    settings: Any
    inputs: list[str] = field(default_factory=list)
    raw: Any = None


@dataclass
class Pipeline:
    """A parsed pipeline config."""

    name: str
    output: Path
    stages: list[Stage]
    data: dict = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        return self.output / "stages" / name


def load_pipeline(path: str | Path, output: str | Path | None = None) -> Pipeline:
    """Reads and checks a pipeline YAML; every error names the field and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: {path} does not exist; pipelines live in configs/pipelines/.")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"output", "data", "stages"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; allowed: output, data, stages.")
    if not isinstance(raw.get("data") or {}, dict):
        raise ValueError(
            f"data: {raw['data']!r} is not a mapping; give data settings, e.g. `data: {{batch_size: 16}}`."
        )
    if not isinstance(raw.get("output") or "", str):
        raise ValueError(
            f"output: {raw['output']!r} is not a folder path; give one, e.g. `output: runs/mine`."
        )
    stages = raw.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ValueError(f"{path}: `stages` must map stage names to one of {KINDS}.")
    out = Path(output or raw.get("output") or Path("runs") / path.stem)
    parsed: list[Stage] = []
    for name, body in stages.items():
        parsed.append(_stage(str(name), body, raw.get("data") or {}, out, {s.name: s.kind for s in parsed}))
    return Pipeline(path.stem, out, parsed, raw.get("data") or {})


def stage_output(output: Path, name: str, kind: str) -> Path:
    """What ``{name}`` stands for: see the module docstring."""
    if kind == "export":  # a stage named `export` writes `export/`, as the classification pipelines do
        return output / name
    if kind == "multitask":
        return output / "stages" / name
    return output / "stages" / name / "model"


def _stage(name: str, body: Any, shared_data: dict, output: Path, earlier: dict[str, str]) -> Stage:
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in KINDS:
        raise ValueError(f"stages.{name}: give exactly one of {KINDS}, e.g. `{name}: {{fit: {{...}}}}`.")
    kind, settings = next(iter(body.items()))
    settings = copy.deepcopy(settings) if settings is not None else {}
    if kind == "fit":
        settings["data"] = {**shared_data, **(settings.get("data") or {})}
    if kind in KEYS:
        _check_keys(f"stages.{name}.{kind}", settings, KEYS[kind], REQUIRED[kind])
    _check_braces(f"stages.{name}.{kind}", settings, list(earlier))
    inputs = sorted(set(_placeholders(settings)))
    for ref in inputs:
        if ref not in earlier:
            raise ValueError(
                f"stages.{name}: '{{{ref}}}' refers to no earlier stage; "
                f"earlier stages: {list(earlier) or 'none'}."
            )
    resolved = _substitute(settings, {ref: str(stage_output(output, ref, earlier[ref])) for ref in inputs})
    return Stage(name, kind, resolved, inputs, settings)


def _check_keys(where: str, settings: Any, types: dict[str, type], required: tuple[str, str]) -> None:
    """An export or report stage: known keys, each of its type, the required one present."""
    if not isinstance(settings, dict) or set(settings) - set(types):
        raise ValueError(f"{where}: a mapping with keys among {sorted(types)}.")
    for key, value in settings.items():
        number = types[key] is float and isinstance(value, int) and not isinstance(value, bool)
        if value is not None and not number and not isinstance(value, types[key]):
            raise ValueError(f"{where}.{key}: {value!r} must be {TYPE_NAMES[types[key]]}.")
    key, hint = required
    if not settings.get(key):
        raise ValueError(f"{where}.{key}: missing; {hint}.")


def _check_braces(where: str, value: Any, earlier: list[str]) -> None:
    """Refuses strings with braces that are not a whole ``{stage}`` placeholder (e.g. ``{teacher``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_braces(f"{where}.{key}", item, earlier)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_braces(f"{where}[{index}]", item, earlier)
    elif isinstance(value, str) and set("{}") & set(PLACEHOLDER.sub("", value)):
        raise ValueError(
            f"{where}: {value!r} is not a stage placeholder; write '{{name}}' with the name of an earlier "
            f"stage (earlier stages: {earlier or 'none'})."
        )


def _placeholders(value: Any) -> list[str]:
    if isinstance(value, str):
        return PLACEHOLDER.findall(value)
    if isinstance(value, dict):
        return [ref for v in value.values() for ref in _placeholders(v)]
    if isinstance(value, list):
        return [ref for v in value for ref in _placeholders(v)]
    return []


def _substitute(value: Any, folders: dict[str, str]) -> Any:
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: folders.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _substitute(v, folders) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, folders) for v in value]
    return value

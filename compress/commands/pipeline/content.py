"""What decides a stage's reuse: the content of the files it reads and of the output it wrote.

`digest` hashes a file, or every file under a folder with its relative path (sha256 of each file, read
whole: a file edited in place with its size and time kept cannot slip through). A stage's fingerprint
holds the digests of the local files and folders its settings name (data files, model folders, tokenizers)
and of the outputs of the stages it reads; its manifest holds the digest of its own output, which must
still match for the stage to be reused.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "rows.csv").write_text("text,label\\ngood,1\\n")
    >>> before = digest([root / "rows.csv"])
    >>> _ = (root / "rows.csv").write_text("text,label\\ngood,0\\n")  # same size, other label
    >>> digest([root / "rows.csv"]) == before
    False
    >>> local_inputs({"data": {"source": str(root / "rows.csv"), "batch_size": 8}, "model": "tiny-bert"})
    [...rows.csv']
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from compress.commands.pipeline.config import Pipeline, Stage

BOOKKEEPING = frozenset({"manifest.json", "running.json", "stage.yaml", "checkpoints"})  # not outputs


class Meter:
    """Counts the bytes hashed, for the cost line the pipeline prints."""

    bytes = 0


def digest(paths: Iterable[Path]) -> str | None:
    """One hash of every file under ``paths`` (files or folders) with their relative names; None if one of
    them is missing. Top-level bookkeeping files of a stage folder (`BOOKKEEPING`) are left out."""
    total = hashlib.sha256()
    for path in paths:
        if not path.exists():
            return None
        total.update(f"{path.name}\0".encode())
        for file in _files(path):
            total.update(f"{file.relative_to(path).as_posix()}\0".encode())
            with file.open("rb") as handle:
                total.update(hashlib.file_digest(handle, "sha256").digest())
            Meter.bytes += file.stat().st_size
    return total.hexdigest()[:16]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    top = [p for p in path.iterdir() if p.name not in BOOKKEEPING]
    return sorted(f for p in top for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def local_inputs(settings: Any) -> list[str]:
    """Every string in ``settings`` that names an existing file or folder, sorted and without repeats."""
    if isinstance(settings, dict):
        return sorted({path for value in settings.values() for path in local_inputs(value)})
    if isinstance(settings, list):
        return sorted({path for value in settings for path in local_inputs(value)})
    if isinstance(settings, str) and settings.strip() and "\n" not in settings and Path(settings).exists():
        return [settings]
    return []


def input_digests(stage: Stage, pipeline: Pipeline, known: dict[str, str | None]) -> dict[str, str | None]:
    """The digest of each local file or folder the stage's settings (and the shared data) name, hashed once
    per run (``known`` holds those hashed by earlier stages); paths inside the run folder are stage outputs,
    covered by the upstream digests instead."""
    run = pipeline.output.resolve()
    read = [stage.raw, shared_data(stage, pipeline)]
    named = [path for path in local_inputs(read) if not _inside(Path(path).resolve(), run)]
    for path in named:
        if path not in known:
            known[path] = digest([Path(path)])
    return {path: known[path] for path in named}


def shared_data(stage: Stage, pipeline: Pipeline) -> dict:
    """The shared ``data`` settings if the stage reads them (a fit stage has them merged into its own)."""
    return pipeline.data if stage.kind in ("prune", "export", "report") else {}


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder) or folder.is_relative_to(path)


def outputs_of(pipeline: Pipeline, stage: Stage) -> list[Path]:
    """What a stage writes: its model folder, its multitask folder, its export folder or the report files."""
    folder = pipeline.stage_dir(stage.name)
    if stage.kind == "multitask":
        return [folder]
    if stage.kind == "export":
        return [pipeline.output / stage.name]
    if stage.kind == "report":
        return [pipeline.output / f"report.{suffix}" for suffix in ("md", "json", "png")]
    return [folder / "model"]

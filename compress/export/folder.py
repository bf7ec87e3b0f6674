"""All-or-nothing output folders: an export either appears complete at its path or not at all.

`atomic_output` hands out a temporary sibling folder (same parent, so the final `os.rename` stays on one
file system and is atomic), and moves it into place only when the ``with`` block ends without an
exception. A crash, a failed verification or Ctrl-C therefore leaves nothing at ``path``; with
``overwrite=True`` the old folder is replaced only after the new one is complete.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_output(root / "hf") as staging:
    ...     _ = (staging / "config.json").write_text("{}")
    >>> sorted(p.name for p in root.iterdir())
    ['hf']
    >>> try:
    ...     with atomic_output(root / "broken") as staging:
    ...         raise RuntimeError("interrupted")
    ... except RuntimeError:
    ...     pass
    >>> sorted(p.name for p in root.iterdir())  # no half-written 'broken' folder, no staging left over
    ['hf']
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_output(path: str | Path, overwrite: bool = False, field: str = "path") -> Path:
    """Refuses an existing ``path`` unless ``overwrite``; call it before any expensive work.

    Args:
        path: the folder to create.
        overwrite: accept an existing folder (it is replaced later).
        field: the setting that gave ``path``, named in the error.

    Raises:
        ValueError: ``path`` exists and ``overwrite`` is False, or ``path`` is an existing file.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(
            f"{field}: export path {path} exists already; choose another path or pass overwrite=True to "
            "replace it"
        )
    if path.exists() and not path.is_dir():
        raise ValueError(f"{field}: export path {path} is a file, not a folder; choose a folder path")
    return path


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder that becomes ``path`` when the block succeeds.

    Args:
        path: the final folder; its parent is created if needed.
        overwrite: replace an existing folder at ``path`` (only once the new one is complete).

    Raises:
        ValueError: ``path`` exists and ``overwrite`` is False (before the block runs).
    """
    path = check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A dot-prefixed sibling: same file system as `path` (rename is atomic) and hidden from listings.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a deployed model folder is usually shared
    try:
        yield staging
        _move_into_place(staging, path, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, path: Path, overwrite: bool) -> None:
    """Renames ``staging`` to ``path``; an old folder is renamed aside first and deleted last."""
    if not path.exists():
        os.rename(staging, path)
        return
    check_output(path, overwrite)  # something appeared at `path` while we were writing
    retired = path.with_name(f".{path.name}.{os.getpid()}.old")
    os.rename(path, retired)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(retired, path)  # put the old export back rather than leave nothing
        raise
    shutil.rmtree(retired, ignore_errors=True)

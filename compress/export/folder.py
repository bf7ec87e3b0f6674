"""All-or-nothing output folders: an export either appears complete at its path or not at all.

`atomic_output` hands out a temporary sibling folder (same parent, so the final `os.rename` stays on one
file system and is atomic), and moves it into place only when the ``with`` block ends without an
exception. A crash, a failed verification or Ctrl-C therefore leaves nothing at ``path``; with
``overwrite=True`` the old folder is replaced only after the new one is complete, and only if compress
wrote it (it holds the `MARKER` file every folder made here gets): a folder of the user's own is never
replaced. A staging folder left by a killed process is removed by the next write to the same path. Files
get the user's normal permissions (the umask), not the owner-only mode some writers use.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_output(root / "hf") as staging:
    ...     _ = (staging / "config.json").write_text("{}")
    >>> sorted(p.name for p in (root / "hf").iterdir())
    ['.compress-output', 'config.json']
    >>> try:
    ...     with atomic_output(root / "broken") as staging:
    ...         raise RuntimeError("interrupted")
    ... except RuntimeError:
    ...     pass
    >>> sorted(p.name for p in root.iterdir())  # no half-written 'broken' folder, no staging left over
    ['hf']
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".compress-output"  # in every folder `atomic_output` writes: overwrite may replace it


def written_by_compress(path: Path) -> bool:
    """True for a folder `atomic_output` wrote (it holds `MARKER`)."""
    return (path / MARKER).is_file()


def check_output(path: str | Path, overwrite: bool = False, field: str = "path") -> Path:
    """Refuses an existing ``path`` unless ``overwrite``; call it before any expensive work.

    Args:
        path: the folder to create.
        overwrite: accept an existing folder (it is replaced later).
        field: the setting that gave ``path``, named in the error.

    Raises:
        ValueError: ``path`` exists and ``overwrite`` is False, ``path`` is an existing file, or a folder
            that compress did not write (``overwrite`` replaces only compress's own outputs).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(
            f"{field}: export path {path} exists already; choose another path or pass overwrite=True to "
            "replace it"
        )
    if path.exists() and not path.is_dir():
        raise ValueError(f"{field}: export path {path} is a file, not a folder; choose a folder path")
    if path.is_dir() and any(path.iterdir()) and not written_by_compress(path):
        raise ValueError(
            f"{field}: {path} holds files compress did not write (no {MARKER} file), and overwrite replaces "
            "only compress's own outputs; choose another path, or move those files away yourself"
        )
    return path


def check_holds_no_input(
    path: str | Path, inputs: dict[str, str | Path | None], field: str = "output"
) -> None:
    """Refuses an output folder that is, or holds, one of the ``inputs`` (setting name -> path): writing
    it would replace what is being read.

    Example:
        >>> check_holds_no_input("runs/a", {"model": "runs/a/stages/student/model"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: output: runs/a holds model (runs/a/stages/student/model), an input of this command; ...
    """
    out = Path(path).resolve()
    for name, source in inputs.items():
        if source is not None and Path(source).resolve().is_relative_to(out):
            raise ValueError(
                f"{field}: {path} holds {name} ({source}), an input of this command; choose an output "
                "folder outside it"
            )


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
    with _named_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(path)
        # A dot-prefixed sibling: same file system as `path` (rename is atomic) and hidden from listings.
        prefix = f".{path.name}.{socket.gethostname()}.{os.getpid()}."
        staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=path.parent))
        try:
            yield staging
            (staging / MARKER).write_text("written by compress; `overwrite` may replace this folder\n")
            with_user_permissions(staging)
            _move_into_place(staging, path, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


WRITE_FIXES = {
    errno.ENOSPC: "the disk is full: free some space, or choose a folder on another disk",
    errno.EDQUOT: "the disk quota is used up: free some space, or choose a folder on another disk",
    errno.EACCES: "no permission to write there: choose a folder you can write to",
    errno.EPERM: "no permission to write there: choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose a folder on a writable disk",
}


@contextmanager
def _named_write_errors(path: Path) -> Iterator[None]:
    """A full disk or a folder one may not write (also as the safetensors writer reports them) becomes an
    OSError naming the output and the fix; nothing is left at ``path``."""
    try:
        yield
    except OSError as err:
        if err.errno not in WRITE_FIXES:
            raise
        raise OSError(err.errno, f"cannot write {path} ({err.strerror}); {WRITE_FIXES[err.errno]}") from err
    except Exception as err:
        code = re.search(r"code: (\d+)", str(err)) if type(err).__name__ == "SafetensorError" else None
        if code is None or int(code[1]) not in WRITE_FIXES:
            raise
        fix = WRITE_FIXES[int(code[1])]
        raise OSError(int(code[1]), f"cannot write {path} ({os.strerror(int(code[1]))}); {fix}") from err


def with_user_permissions(root: Path) -> None:
    """Gives every file and folder under ``root`` the mode the user's umask gives new files (mkdtemp and
    safetensors make theirs owner-only; a model folder is usually shared)."""
    umask = _umask()
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask sets it while reading)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^Umask:\s*([0-7]+)", status, re.M)[1], 8)
    except (OSError, TypeError):
        umask = os.umask(0o022)
        os.umask(umask)
        return umask


def remove_stale_staging(path: Path) -> list[Path]:
    """Deletes staging folders of ``path`` left by killed processes of this host (their pid no longer runs)
    and returns them. An old folder set aside by a process killed before the new one took its place is put
    back at ``path``. Another live process's folders are left alone."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>.+)\.(?P<pid>\d+)\.[^.]*\.(partial|old)$")
    stale = []
    for candidate in path.parent.glob(f".{path.name}.*"):
        match = pattern.match(candidate.name)
        if match and match["host"] == socket.gethostname() and not pid_alive(int(match["pid"])):
            if candidate.suffix == ".old" and not path.exists():
                os.rename(candidate, path)
                continue
            shutil.rmtree(candidate, ignore_errors=True)
            stale.append(candidate)
    return stale


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _move_into_place(staging: Path, path: Path, overwrite: bool) -> None:
    """Renames ``staging`` to ``path``; an old folder is renamed aside first and deleted last."""
    if not path.exists():
        os.rename(staging, path)
        return
    check_output(path, overwrite)  # something appeared at `path` while we were writing
    retired = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.retired.old")
    os.rename(path, retired)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(retired, path)  # put the old export back rather than leave nothing
        raise
    shutil.rmtree(retired, ignore_errors=True)

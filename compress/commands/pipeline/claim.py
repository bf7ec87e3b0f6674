"""One pipeline run per output folder, and only in a folder that is empty, new or a run of ours.

`claim_output` marks the folder as a compress run (`MARKER`) and holds an exclusive lock on its `LOCK`
file for the whole run (``flock``: the kernel releases it when the process ends, even by ``kill -9``, so a
lock left by a dead run never blocks the next one). The lock file names its holder (pid, host, start), so
a second run on the folder is refused with who holds it. A folder that holds other files and no marker is
refused before anything is written. A folder the claim created is removed again if the run wrote nothing.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> with claim_output(run):
    ...     sorted(p.name for p in run.iterdir())
    ['.compress-run', '.compress-run.lock']
    >>> run.exists()  # nothing written: the folder is gone again
    False
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".compress-run"
LOCK = ".compress-run.lock"


class OutputInUse(RuntimeError):
    """Another live run holds the output folder's lock."""


@contextmanager
def claim_output(output: Path, field: str = "output") -> Iterator[None]:
    """Holds ``output`` for one run: refuses a folder of other files or one another run holds."""
    created = not output.exists()
    check_run_folder(output, field)
    output.mkdir(parents=True, exist_ok=True)
    handle = _lock(output / LOCK, field)
    try:
        (output / MARKER).write_text("a compress pipeline run folder\n")
        yield
    finally:
        handle.close()  # releases the lock
        if created and {p.name for p in output.iterdir()} <= {MARKER, LOCK}:
            for name in (MARKER, LOCK):
                (output / name).unlink(missing_ok=True)
            output.rmdir()


def check_run_folder(output: Path, field: str = "output") -> None:
    """Refuses an existing ``output`` that is neither empty nor a compress run, before anything is written."""
    if not output.exists():
        return
    if not output.is_dir():
        raise ValueError(f"{field}: {output} is a file; give a folder for the run.")
    if any(output.iterdir()) and not (output / MARKER).is_file() and not _older_run(output):
        raise ValueError(
            f"{field}: {output} holds files that are not a compress run (no {MARKER} file); a run replaces "
            "what it writes there, so give a new or empty folder (--output), or move those files away."
        )


def _older_run(output: Path) -> bool:
    """A run folder written before the marker existed: it has stage manifests."""
    return any((output / "stages").glob("*/manifest.json"))


def _lock(path: Path, field: str):
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs on one folder are not serialised there
        return open(os.devnull)  # noqa: SIM115 (closed by claim_output)
    handle = open(path, "a+")  # noqa: SIM115 (held open for the run: the lock lives as long as the handle)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(path)
        handle.close()
        raise OutputInUse(
            f"{field}: {path.parent} is in use by another compress pipeline run ({holder}); wait until it "
            "ends, or give another --output. Runs sharing a folder would replace each other's stages."
        ) from None
    handle.seek(0)
    handle.truncate()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    handle.write(json.dumps({**holder, "command": " ".join(sys.argv)}) + "\n")
    handle.flush()
    return handle


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError):
        return "its holder is still writing its name"

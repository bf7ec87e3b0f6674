"""Peak memory of one part of a process, from Linux's /proc/self (no heavy imports: runs in child processes).

``resource.getrusage(...).ru_maxrss`` is no measure for a child process: Linux keeps the high-water mark
across ``fork`` and ``execve``, so a child of a large process (`make bench` after its training measures)
starts with its parent's peak and every part it measures reads 0 MB. ``VmHWM`` belongs to the process's
own memory map, and writing 5 to ``/proc/self/clear_refs`` resets it to the current RSS.
"""

from __future__ import annotations


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``: now, ``VmHWM``: the peak since the last reset)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def reset_peak() -> bool:
    """Resets ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False

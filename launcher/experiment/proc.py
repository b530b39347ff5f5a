"""What the launcher reads about a process: its state and how it ended.

A module of its own so that :mod:`launcher.experiment.run` and
:mod:`launcher.experiment.faults` (which the run imports) both use it.
"""

from __future__ import annotations

import signal


def process_state(pid: int) -> str:
    """'running', 'sleeping', 'stopped', ... from /proc/<pid>/stat, or 'gone'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return "gone"
    code = data[data.rindex(b")") + 2:].split()[0].decode()
    return {"R": "running", "S": "sleeping", "D": "in uninterruptible sleep",
            "T": "stopped", "t": "stopped by a tracer", "Z": "a zombie"}.get(code, code)


def describe_exit(code: int | None) -> str:
    """How a child ended, from its exit code (negative: the signal)."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"was killed by signal {-code} ({name})"
    return f"exited with status {code}"


"""The errors several layers of the launcher raise, and what the command
line makes of each: the bottom of the launcher, importing nothing of it.

* :class:`UsageError`: bad command line or bad value; one line on stderr,
  exit 2, before anything is created.
* :class:`RunAborted`: a run had to stop (a process died or stalled); one
  line naming the culprit, exit 3.

(A bad value found by the core's own checks is :class:`shmalloc.machine.ConfigError`,
which the command line treats as a :class:`UsageError`.)
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad command line or bad value: one line on stderr, exit 2."""


class RunAborted(Exception):
    """The run had to stop: a process died or stalled."""

    def __init__(self, reason: str, exit_status: int = 3):
        super().__init__(reason)
        self.exit_status = exit_status

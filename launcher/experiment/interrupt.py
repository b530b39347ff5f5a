"""Ctrl-C and SIGTERM at any moment: honoured at once, one line, 128+signal.

``main`` calls :func:`install` before anything else.  From then on SIGINT and
SIGTERM raise :class:`Interrupted` in the launcher at its next Python
instruction, wherever it is: checking arguments, waiting for the compile
processes, inside numba compiling or loading a kernel, creating the machine,
starting the children, in the watch loop, stopping, collecting, between the
designs of ``compare`` or the points of ``sweep``.  The exception unwinds
through the ``finally`` blocks that kill the children and remove every IPC
object; ``main`` prints one line naming the phase (:func:`enter`) and exits
with 128 + the signal number.

Two kinds of code must not be cut in half:

* creating something and recording it so that cleanup finds it (a machine,
  a child process): :func:`deferred` holds a signal until the block is done,
  then raises it;
* the cleanup itself: once a signal has been honoured, further SIGINTs and
  SIGTERMs are ignored, so a second Ctrl-C cannot leave objects behind.  The
  cleanup is bounded (children are killed, not waited for); a launcher
  killed outright (SIGKILL) leaves its objects to ``shmalloc cleanup``.

Forked children inherit the handler until they install their own: in a child
it ignores SIGINT (a terminal sends Ctrl-C to the whole process group; the
launcher decides) and exits on SIGTERM.

Tests wait for a phase by an event, not a sleep: with
``SHMALLOC_TEST_PHASE=<checkpoint>`` the launcher creates the file
``SHMALLOC_TEST_PHASE_FILE`` when it reaches that :func:`checkpoint`, and with
``SHMALLOC_TEST_PHASE_PAUSE=1`` it then waits there for a signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PAUSE_BACKSTOP_S = 120.0      # a paused test checkpoint gives up after this long

_state = {
    "pid": None,              # the launcher's pid (children see another)
    "phase": "while starting",
    "defer": 0,               # nesting depth of deferred()
    "pending": None,          # a signal held by deferred()
    "honoured": None,         # the signal being honoured: cleanup is running
    "partial_line": False,    # a progress display left a line open on stderr
}


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived.  A BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` (ours or numba's) swallows it."""

    def __init__(self, signum: int, phase: str):
        super().__init__(signum, phase)
        self.signum = signum
        self.phase = phase

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name} {self.phase}"


def install() -> None:
    """Handle SIGINT and SIGTERM in this process (the launcher)."""
    _state.update(pid=os.getpid(), honoured=None, pending=None, defer=0)
    for s in SIGNALS:
        signal.signal(s, _handler)


def installed() -> bool:
    return _state["pid"] == os.getpid()


def _handler(signum, frame) -> None:
    if os.getpid() != _state["pid"]:          # a forked child, before its own handlers
        if signum == signal.SIGTERM:
            os._exit(128 + signum)
        return
    if _state["honoured"] is not None:        # cleaning up already: let it finish
        return
    if _state["defer"]:
        _state["pending"] = _state["pending"] or signum
        return
    _raise(signum)


def _raise(signum: int) -> None:
    _state["honoured"] = signum
    raise Interrupted(signum, _state["phase"])


def ignore_from_now() -> None:
    """Ignore SIGINT and SIGTERM for the rest of the process: it is exiting
    after honouring one (Python restores the default handlers while it shuts
    down, and a late Ctrl-C would turn status 130 into a death by SIGINT)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def enter(phase: str) -> None:
    """Name the phase the launcher is in, for the message: a phrase that
    follows "interrupted by SIGINT", e.g. "while compiling kernels"."""
    _state["phase"] = phase


def phase() -> str:
    return _state["phase"]


def honoured() -> int | None:
    """The signal being honoured (cleanup is running), or None."""
    return _state["honoured"]


@contextlib.contextmanager
def deferred():
    """Hold SIGINT/SIGTERM until the block is done, then honour it."""
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1
        if not _state["defer"] and _state["pending"] and _state["honoured"] is None:
            signum, _state["pending"] = _state["pending"], None
            _raise(signum)


def partial_line(open_: bool) -> None:
    """A progress display says whether it left a line open on stderr."""
    _state["partial_line"] = open_


def end_partial_line() -> None:
    """Before printing a message: finish a progress line left open."""
    if _state["partial_line"]:
        sys.stderr.write("\n")
        _state["partial_line"] = False


def checkpoint(name: str) -> None:
    """A test hook (see the module docstring); nothing unless asked for."""
    if os.environ.get("SHMALLOC_TEST_PHASE") != name:
        return
    path = os.environ.get("SHMALLOC_TEST_PHASE_FILE")
    if path:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    if os.environ.get("SHMALLOC_TEST_PHASE_PAUSE"):
        deadline = time.monotonic() + PAUSE_BACKSTOP_S
        while time.monotonic() < deadline:     # a signal ends it (Interrupted)
            time.sleep(0.01)


@contextlib.contextmanager
def handling():
    """Within the block, signals are handled as in ``main`` (for callers of
    the Python API, e.g. the launch scripts); a no-op where :func:`install`
    already ran."""
    if installed():
        yield
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    install()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state["pid"] = None

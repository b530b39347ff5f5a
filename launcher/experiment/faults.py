"""Fault injection (``--inject WHAT@SECONDS``): what goes wrong, and when.

``kill-worker[:N]``   SIGKILL worker N (default 0), outside the allocator
``stop-worker[:N]``   SIGSTOP worker N, at a moment it holds a zone lock if
                      that happens within a second (the stall the watchdog
                      must name); it stays stopped
``kill-reporter``     SIGKILL the reporter in the middle of a cycle, with a
                      batch pulled off the free lists (or ranges isolated) if
                      that shows up within a few seconds
``kill-hypervisor``   SIGKILL the hypervisor stub
``slow-hypervisor``   the stub stops answering for an hour: the reporter
                      waits for an acknowledgement that does not come

Each fires once, ``SECONDS`` (or a time with a unit: 500ms, 2s) after the
workers started.  The run must then
stop in bounded time (5 s after a death, ``--stall-timeout`` after a stall),
name the process and the fault, exit 3, remove every IPC object, and account
for every page.

A killed process dies outside the zone locks: the injector stops it, looks,
and kills it only when it holds none (or lets it run on and tries again).
A process killed inside a critical section leaves that zone's lists half
updated, the user-space counterpart of a CPU dying with ``zone->lock`` held;
the run reports that too (a death by an outside ``kill`` can land there),
but the injected faults model processes dying, not the allocator breaking.
"""

from __future__ import annotations

import os
import signal
import time
from argparse import ArgumentTypeError
from dataclasses import dataclass

import numpy as np

from shmalloc.layout import MIGRATE_ISOLATE, PS_INFLIGHT, RS_HV_EXTRA_LATENCY_MS, Z_LOCK_PID

from ..units import parse_duration
from .proc import process_state

KINDS = ("kill-worker", "stop-worker", "kill-reporter", "kill-hypervisor", "slow-hypervisor")
WAIT_FOR_MOMENT_S = {"stop-worker": 1.0, "kill-reporter": 5.0}
SLOW_HOST_MS = 3_600_000


class FaultError(ValueError):
    """A bad --inject value."""


@dataclass
class Fault:
    kind: str
    at: float                 # seconds after the start
    worker: int = 0
    fired: bool = False
    fired_at: float | None = None     # seconds after the start
    note: str = ""

    def __str__(self) -> str:
        who = f":{self.worker}" if self.kind.endswith("-worker") else ""
        return f"{self.kind}{who}@{self.at:g}"


def parse(text: str) -> Fault:
    what, sep, when = text.partition("@")
    kind, _, arg = what.partition(":")
    if not sep or kind not in KINDS:
        raise FaultError(f"{text!r}: expected WHAT@SECONDS with WHAT one of {', '.join(KINDS)}")
    try:
        at = parse_duration(when)
    except ArgumentTypeError:
        raise FaultError(f"{text!r}: {when!r} is not a number of seconds or a time with a "
                         "unit (500ms, 5s, 2m)") from None
    if not 0 <= at < 86400:
        raise FaultError(f"{text!r}: the time must be in 0..86400 s")
    worker = 0
    if arg:
        if not kind.endswith("-worker") or not arg.isdigit():
            raise FaultError(f"{text!r}: only kill-worker and stop-worker take :N (a worker)")
        worker = int(arg)
    return Fault(kind, at, worker)


def check(faults: list[Fault], cfg) -> None:
    """Refuse faults the configuration cannot have, before anything runs."""
    for f in faults:
        if f.kind.endswith("-worker") and f.worker >= cfg.workers:
            raise FaultError(f"{f}: there are only {cfg.workers} workers")
        if f.kind == "kill-reporter" and not cfg.design.reporter:
            raise FaultError(f"{f}: strategy {cfg.strategy} runs no reporter process")
        if f.kind.endswith("-hypervisor") and not cfg.design.hypervisor:
            raise FaultError(f"{f}: strategy {cfg.strategy} runs no hypervisor stub")
        if f.kind == "slow-hypervisor" and not cfg.design.reporter:
            raise FaultError(f"{f}: strategy {cfg.strategy} sends no reports to slow down")
        if cfg.duration and f.at >= cfg.duration:
            raise FaultError(f"{f}: later than the end of the run (--duration {cfg.duration:g})")


class Injector:
    """Fires the faults from the launcher's watch loop, one step at a time."""

    def __init__(self, faults: list[Fault], run):
        self.faults = faults
        self.run = run

    def step(self, elapsed: float) -> None:
        for f in self.faults:
            if f.fired or elapsed < f.at:
                continue
            late = elapsed - f.at >= WAIT_FOR_MOMENT_S.get(f.kind, 0.0)
            if late or self._the_moment(f):
                self._fire(f, elapsed)

    def notes(self) -> str:
        fired = [f.note for f in self.faults if f.fired]
        return f" [injected: {'; '.join(fired)}]" if fired else ""

    def record(self) -> list[dict]:
        """The results file's ``injected``: each fault, when it fired (seconds
        after the start, None if it never did) and what it hit."""
        return [{"fault": str(f), "fired_at_s": None if f.fired_at is None else
                 round(f.fired_at, 3), "note": f.note} for f in self.faults]

    def _pid(self, f: Fault) -> int:
        role = {"kill-reporter": "reporter", "kill-hypervisor": "hypervisor",
                "slow-hypervisor": "hypervisor"}.get(f.kind, "worker")
        kids = [c for c in self.run.children if c.role == role]
        return (kids[f.worker] if role == "worker" else kids[0]).pid

    def _the_moment(self, f: Fault) -> bool:
        m = self.run.machine
        if f.kind == "stop-worker":                     # inside a zone's critical section
            pid = self._pid(f)
            return any(int(m.zs[m.layout.zone(z) + Z_LOCK_PID]) == pid
                       for z in range(m.nr_zones))
        if f.kind == "kill-reporter":                   # a batch pulled off the lists,
            lay = m.layout                              # or ranges isolated
            pageblocks = m.zs[lay.off_pageblock: lay.off_pageblock + lay.nr_pageblocks]
            return bool(np.any(m.frames["state"] == PS_INFLIGHT) or
                        np.any(pageblocks == MIGRATE_ISOLATE))
        return True

    def _fire(self, f: Fault, elapsed: float) -> None:
        f.fired = True
        m = self.run.machine
        if f.kind == "slow-hypervisor":
            m.zs[m.layout.off_report + RS_HV_EXTRA_LATENCY_MS] = SLOW_HOST_MS
            f.fired_at = elapsed
            f.note = f"{f.kind} at {elapsed:.1f} s"
            return
        pid = self._pid(f)
        batch = False
        try:
            os.kill(pid, signal.SIGSTOP)
            if not self._stopped(pid):
                f.fired = False                     # try again at the next step
                return
            holds = [z for z in range(m.nr_zones)
                     if int(m.zs[m.layout.zone(z) + Z_LOCK_PID]) == pid]
            if f.kind != "stop-worker":
                if holds:                           # inside the allocator: not now
                    os.kill(pid, signal.SIGCONT)
                    f.fired = False
                    return
                # stopped: what it leaves behind is what the run will find
                batch = f.kind == "kill-reporter" and self._the_moment(f)
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        f.fired_at = elapsed
        where = f", holding the zone {holds[0]} lock" if holds else ""
        if f.kind == "kill-reporter":
            where = ", with a batch out" if batch else ", with no batch out"
        f.note = f"{f.kind} pid {pid} at {elapsed:.1f} s{where}"

    @staticmethod
    def _stopped(pid: int, timeout: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while process_state(pid) != "stopped":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0002)
        return True

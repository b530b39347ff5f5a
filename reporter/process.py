"""The reporter process, and the shape every reporting design shares.

The kernel runs page reporting from a delayed work item; here it is a
process that binds the reporter agent and loops:

    wait for work   (mainline: the free-path hook's IDLE -> REQUESTED edge
                     posts the run's wake semaphore; then sleep the delay)
    process()       one pass over the zones: fill a batch, report it, drain
                    it back, until there is no full batch left (the design)
    again?          a pass that ends with work still requested sleeps the
                    delay and runs again without waiting for a wake-up

A design subclasses :class:`ReportingDesign` and supplies ``process()`` and,
if its trigger differs, ``wait()``.  It reaches the allocator only through the
core's primitives (zone lock, free lists, isolate/put back) and the hypervisor
only through ``self.report(n)``: the contract of include/linux/page_reporting.h.

Stopping: the launcher raises the stop level to STOP_REPORTER after the
workers are gone; a design notices between reports, so a batch in flight is
acknowledged and put back before the process exits.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

import numpy as np
import posix_ipc

from shmalloc._libc import die_with_parent
from shmalloc.layout import (
    H_STOP,
    ROLE_REPORTER,
    RS_ACK_PENDING_SINCE,
    RS_ACK_WAIT_TICKS,
    RS_PAGES_REPORTED,
    RS_RANGES_REPORTED,
    RS_RE_REPORTS,
    RS_REPORT_ERRORS,
    RS_REPORTS,
    STOP_REPORTER,
)
from shmalloc.lock import now_ticks
from shmalloc.procstat import record_rusage
from shmalloc.virtqueue import KIND_REPORT

from .device import QueueDevice

POLL_S = 0.05

IMPLEMENTATIONS: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        IMPLEMENTATIONS[name] = cls
        return cls
    return deco


@dataclass(frozen=True)
class ReporterOptions:
    design: str
    delay: float             # seconds between a request and the pass (and between passes)
    capacity: int            # ranges per report
    report_order: int
    callback_mode: str = "hint"
    putback: str | None = None      # mainline, isolate: "head" (5.7) or "tail" (5.10)
    walk_order: int = 0             # callback: the lowest order walk_free_mem_block visits
    callback_ns: int | None = None  # callback: per-block cost under the lock; None: calibrate
    start_reported: bool = False    # --start reported: the initial flush is done, stay idle


class ReportingDesign:
    """One reporting design running in the reporter process."""

    name = "?"

    def __init__(self, machine, agent: int, device, opts: ReporterOptions):
        self.m = machine
        self.zs = machine.zs
        self.frames = machine.frames
        self.agent = agent
        self.device = device
        self.opts = opts
        self.batch_pfn = np.zeros(opts.capacity, np.int64)
        self.batch_order = np.zeros(opts.capacity, np.int64)
        self.stats = machine.layout.off_report
        self.reported_before: set[tuple[int, int]] = set()
        self.to_tail = opts.putback == "tail"       # FPI_TO_TAIL on put-back

    # -- helpers every design uses -------------------------------------------
    def stopping(self) -> bool:
        return self.zs[H_STOP] >= STOP_REPORTER

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early to stop; False if the run is stopping."""
        end = time.monotonic() + seconds
        while not self.stopping():
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(POLL_S, left))
        return False

    def wait_wake(self) -> bool:
        """Wait for the wake semaphore the free-path hook posts."""
        while not self.stopping():
            try:
                self.m.wake.acquire(POLL_S)
                return True
            except posix_ipc.BusyError:
                continue
        return False

    def report(self, n: int) -> int:
        """``prdev->report()`` on the first ``n`` batch entries, counted.

        A *re-report* is a block this reporter reported before whose memory
        the host no longer holds at all: nothing was written since, the
        report is pure overhead (what PageReported exists to prevent)."""
        re_reports = 0
        for i in range(n):
            block = (int(self.batch_pfn[i]), int(self.batch_order[i]))
            if block in self.reported_before:
                if self.m.resident_pages(block[0], 1 << block[1]) == 0:
                    re_reports += 1
            else:
                self.reported_before.add(block)
        self.zs[self.stats + RS_RE_REPORTS] += re_reports
        t0 = now_ticks()
        self.zs[self.stats + RS_ACK_PENDING_SINCE] = t0       # the watchdog sees a stalled host
        err = self.device.report(self.batch_pfn, self.batch_order, n)
        self.zs[self.stats + RS_ACK_PENDING_SINCE] = 0
        zs, st = self.zs, self.stats
        zs[st + RS_ACK_WAIT_TICKS] += now_ticks() - t0
        zs[st + RS_REPORTS] += 1
        zs[st + RS_RANGES_REPORTED] += n
        zs[st + RS_PAGES_REPORTED] += int(np.sum(np.left_shift(1, self.batch_order[:n])))
        if err:
            zs[st + RS_REPORT_ERRORS] += 1
        return err

    # -- what a design supplies ------------------------------------------------
    @staticmethod
    def message_kind(opts) -> int:
        """What the host is asked to do with the ranges (virtqueue.KIND_*)."""
        return KIND_REPORT

    def start(self) -> None:
        """Registration (``page_reporting_register``)."""

    def wait(self) -> bool:
        """Block until a pass should run; False when the run is stopping.
        By default: the free-path hook's wake-up, then the delay."""
        return self.wait_wake() and self.sleep(self.opts.delay)

    def process(self) -> bool:
        """One pass; True if more work is already requested."""
        raise NotImplementedError

    def run(self) -> None:
        self.start()
        pending = False
        while not self.stopping():
            if pending:
                if not self.sleep(self.opts.delay):
                    break
            elif not self.wait():
                break
            pending = self.process()


def reporter_main(machine, agent: int, opts: ReporterOptions, device=None) -> None:
    """Entry point of the reporter process (forked by the launcher)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    machine.bind(agent, ROLE_REPORTER)
    design_cls = IMPLEMENTATIONS[opts.design]
    if device is None:
        device = QueueDevice(machine, kind=design_cls.message_kind(opts))
    design = design_cls(machine, agent, device, opts)
    design.run()
    record_rusage(machine.zs, machine.layout.wstats(agent))     # CPU time, switches

"""In-process helpers for testing reporting designs without processes."""

from __future__ import annotations

import numpy as np

from reporter import IMPLEMENTATIONS, ReporterOptions
from shmalloc import snapshot
from shmalloc.layout import PG_REPORTED, ROLE_REPORTER


class RecordingDevice:
    """Stands behind report(): records the ranges, lets a test act while the
    batch is with the "host" (``on_report``), then either hands them to a
    hypervisor stub (``hypervisor``: ``Hypervisor.handle`` discards them and
    its status is what report() returns, as QueueDevice returns the
    acknowledgement's) or acknowledges with ``status``."""

    def __init__(self, status: int = 0, hypervisor=None):
        self.reports: list[list[tuple[int, int]]] = []
        self.status = status
        self.on_report = None
        self.hypervisor = hypervisor

    def report(self, pfns, orders, n):
        ranges = [(int(pfns[i]), int(orders[i])) for i in range(n)]
        self.reports.append(ranges)
        if self.on_report:
            self.on_report()
        if self.hypervisor is not None:
            from shmalloc import virtqueue
            return self.hypervisor.handle(virtqueue.KIND_REPORT, ranges)
        return self.status

    def ranges(self) -> list[tuple[int, int]]:
        return sorted(r for rep in self.reports for r in rep)


def design(machine, name: str, device=None, capacity: int = 4, report_order: int = 9,
           cls=None, **kw):
    """``name``'s design object (or a ``cls`` given with ``name``'s options)
    bound to the machine's reporter agent, run in this process
    (``process()`` is one pass)."""
    acting = machine.agent
    machine.bind(machine.reporter_agent, ROLE_REPORTER)
    machine.agent = acting                      # Python calls still act as before
    opts = ReporterOptions(design=name, delay=0.0, capacity=capacity,
                           report_order=report_order, **kw)
    return (cls or IMPLEMENTATIONS[name])(machine, machine.reporter_agent,
                                         device or RecordingDevice(), opts)


def host_takes(machine, hypervisor=None) -> list[tuple[int, int]]:
    """The stub's side of callback's free page virtqueue, in this process:
    take every block sent since it last took; with ``hypervisor`` as the
    stub does (``Hypervisor.take_free_page_vq``: re-reports counted, the
    blocks recorded or discarded)."""
    from shmalloc.freepagevq import free_page_vq_take
    if hypervisor is not None:
        return hypervisor.take_free_page_vq()
    return free_page_vq_take(machine.zs)


def free_blocks_at_least(machine, order: int) -> list[tuple[int, int]]:
    return sorted((p, o) for (z, o, mt), lst in snapshot.free_areas(machine).items()
                  for p in lst if o >= order and mt == 0)


def reported(machine) -> list[int]:
    return [int(p) for p in np.flatnonzero(machine.frames["flags"] & PG_REPORTED)]

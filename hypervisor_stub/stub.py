"""The hypervisor stub: takes reports off the virtqueue, discards the memory
behind them, acknowledges.

Models the host side of virtio-balloon free page reporting: QEMU's
``virtio_balloon_handle_report`` ends in ``ram_block_discard_range``, which
for shared guest memory is ``fallocate(FALLOC_FL_PUNCH_HOLE |
FALLOC_FL_KEEP_SIZE)`` on the backing file, or ``madvise(MADV_REMOVE)`` on
the mapping.  Only these two give tmpfs pages back to the host
(``MADV_DONTNEED`` would only unmap them from this process).  The next guest
write to such a page faults and gets a fresh zeroed page: a refault, and a
zeroed canary if the guest still thought it owned the page.

The acknowledgement carries no error: QEMU's ``virtio_balloon_handle_report``
(hw/virtio/virtio-balloon.c) ignores what ``ram_block_discard_range``
returned and pushes the element back as used, and 5.7's
``virtballoon_free_page_report`` returns 0 once the buffer is used.  So the
stub acknowledges every report with success and counts failed discards
separately (``hv_errors``); the guest marks the blocks Reported either way.

With 2 MiB host pages (``--host-pages 2m``) the stub also marks each host
page it punches out as discarded (:func:`shmalloc.hostpage.host_pages_discarded`),
before the punch, so that a worker's first write into it counts one
refault; a discard that fails is unmarked again.

``--discard none`` only records the ranges (free page *hints*, as for live
migration); ``--hv-latency`` waits that long per report before discarding,
as a busy host would.  The stub never reads guest memory.

With ``--strategy hostscan`` the stub receives no reports: it scans the
guest's free lists itself (:mod:`hypervisor_stub.hostscan`).

With ``--strategy callback`` (Wang's v14) it serves the free page virtqueue
instead (:mod:`shmalloc.freepagevq`): it sleeps until a kick, takes every
block the walk has put on the ring since (after ``--hv-latency``), returns
the buffers, and records or discards the blocks, while the walk goes on.
Nothing is acknowledged: v14's driver waited for nothing.  A block it has
discarded before and of which it holds no page any more is counted as a
re-report (hints, which it only records, never are).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import signal
import time
from dataclasses import dataclass

import posix_ipc

from shmalloc import virtqueue
from shmalloc._libc import die_with_parent
from shmalloc.config import PAGE_SHIFT
from shmalloc.freepagevq import free_page_vq_kind, free_page_vq_take, free_page_vq_wait
from shmalloc.hostpage import host_pages_discarded, host_pages_restored
from shmalloc.layout import (
    H_STOP,
    ROLE_HYPERVISOR,
    RS_HV_DISCARD_TICKS,
    RS_HV_ERRORS,
    RS_HV_EXTRA_LATENCY_MS,
    RS_HV_PAGES_DISCARDED,
    RS_HV_RANGES,
    RS_HV_REQUESTS,
    RS_RE_REPORTS,
    STOP_HYPERVISOR,
)
from shmalloc.lock import now_ticks
from shmalloc.procstat import record_rusage

from .hostscan import HostScanner

DISCARD_MODES = ("punch", "remove", "none")
POLL_S = 0.05
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


@dataclass(frozen=True)
class StubOptions:
    discard: str = "punch"
    hv_latency: float = 0.0
    host_scan: bool = False       # hostscan: scan the guest's free lists, no reports
    free_page_vq: bool = False    # callback: serve the free page virtqueue, no reports
    scan_interval: float = 5.0
    capacity: int = 32            # hostscan: blocks per zone-lock hold


def punch_hole(fd: int, offset: int, length: int) -> int:
    """fallocate(PUNCH_HOLE | KEEP_SIZE): 0 or -errno."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        return -ctypes.get_errno()
    return 0


def madvise_remove(mm: mmap.mmap, offset: int, length: int) -> int:
    try:
        mm.madvise(mmap.MADV_REMOVE, offset, length)
    except OSError as e:
        return -(e.errno or errno.EIO)
    return 0


class Hypervisor:
    """The host side of the report virtqueue for one guest."""

    def __init__(self, machine, opts: StubOptions):
        self.m = machine
        self.opts = opts
        self.stats = machine.layout.off_report
        self.discarded: set[tuple[int, int]] = set()  # free page virtqueue: blocks discarded

    def wait(self, seconds: float) -> None:
        """A busy host: sleep before acting, waking up to stop."""
        end = time.monotonic() + seconds
        while self.m.zs[H_STOP] < STOP_HYPERVISOR and time.monotonic() < end:
            time.sleep(min(POLL_S, max(0.0, end - time.monotonic())))

    def discard(self, pfn: int, order: int) -> int:
        return self.discard_pages(pfn, 1 << order)

    def discard_pages(self, pfn: int, pages: int) -> int:
        """Give ``pages`` pages from ``pfn`` back to the host: 0 or -errno.
        Host pages are marked discarded first: a worker that writes one
        between the mark and the punch (only a design that discards what a
        worker may own lets it) counts its refault early, never twice."""
        offset, length = pfn << PAGE_SHIFT, pages << PAGE_SHIFT
        host_pages_discarded(self.m, pfn, pages)
        if self.opts.discard == "punch":
            err = punch_hole(self.m.guest_fd, offset, length)
        else:
            err = madvise_remove(self.m.guest_mmap, offset, length)
        if err:
            host_pages_restored(self.m, pfn, pages)
        return err

    def handle(self, kind: int, ranges, wait: bool = True) -> int:
        """Act on one report (with ``wait``, after ``--hv-latency``); returns
        the status to acknowledge: always 0, as QEMU's (a failed discard is
        counted in ``hv_errors``, not sent)."""
        zs, st = self.m.zs, self.stats
        zs[st + RS_HV_REQUESTS] += 1
        zs[st + RS_HV_RANGES] += len(ranges)
        if wait:
            self.wait(self.opts.hv_latency + zs[st + RS_HV_EXTRA_LATENCY_MS] / 1000)
        if kind != virtqueue.KIND_REPORT or self.opts.discard == "none":
            return 0                                   # a hint: record only
        t0 = now_ticks()
        for pfn, order in ranges:
            if self.discard(pfn, order):
                zs[st + RS_HV_ERRORS] += 1
            else:
                zs[st + RS_HV_PAGES_DISCARDED] += 1 << order
        zs[st + RS_HV_DISCARD_TICKS] += now_ticks() - t0
        return 0

    def take_free_page_vq(self) -> list[tuple[int, int]]:
        """Take every block on the free page virtqueue, count the re-reports
        among them (blocks it discarded before and of which it holds no page
        any more: one ``mincore`` each, only for those), and act on them
        (record or discard).  Returns them."""
        zs = self.m.zs
        ranges = free_page_vq_take(zs)
        if not ranges:
            return ranges
        kind = free_page_vq_kind(zs)
        discards = kind == virtqueue.KIND_REPORT and self.opts.discard != "none"
        re_reports = 0
        for block in ranges:
            if block in self.discarded:
                re_reports += self.m.resident_pages(block[0], 1 << block[1]) == 0
            elif discards:
                self.discarded.add(block)
        zs[self.stats + RS_RE_REPORTS] += re_reports
        self.handle(kind, ranges, wait=False)
        return ranges

    def serve_free_page_vq(self) -> None:
        """Take the blocks callback's walk puts on the free page virtqueue,
        as the kicks come, until the launcher says stop."""
        zs, st = self.m.zs, self.stats
        while zs[H_STOP] < STOP_HYPERVISOR:
            if free_page_vq_wait(zs) == 0:             # notifications on, nothing there
                try:
                    self.m.wake.acquire(POLL_S)        # until a kick
                except posix_ipc.BusyError:
                    pass
                continue
            self.wait(self.opts.hv_latency + zs[st + RS_HV_EXTRA_LATENCY_MS] / 1000)
            self.take_free_page_vq()

    def serve(self) -> None:
        """Answer reports until the launcher says stop."""
        report_q, ack_q = virtqueue.open_queues(self.m.run_id)
        try:
            while self.m.zs[H_STOP] < STOP_HYPERVISOR:
                try:
                    msg, _ = report_q.receive(POLL_S)
                except posix_ipc.BusyError:
                    continue
                kind, req_id, ranges = virtqueue.decode_report(msg)
                ack_q.send(virtqueue.encode_ack(req_id, self.handle(kind, ranges)))
        finally:
            report_q.close()
            ack_q.close()


def hypervisor_main(machine, agent: int, opts: StubOptions) -> None:
    """Entry point of the hypervisor stub process (forked by the launcher)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    machine.bind(agent, ROLE_HYPERVISOR)
    hv = Hypervisor(machine, opts)
    if opts.host_scan:
        HostScanner(hv, agent, opts.capacity, opts.scan_interval).serve()
    elif opts.free_page_vq:
        hv.serve_free_page_vq()
    else:
        hv.serve()
    record_rusage(machine.zs, machine.layout.wstats(agent))     # CPU time, switches


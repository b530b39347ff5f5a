"""Wei Wang's free page hints, v14 (August 2017, "mm: support reporting free
page blocks" and "virtio-balloon: VIRTIO_BALLOON_F_FREE_PAGE_VQ"; the design
the 2019 thread kept coming back to): ``walk_free_mem_block``.

Sources read: "[PATCH v14 4/5] mm: support reporting free page blocks"
(Wei Wang, 17 August 2017, <1502940416-42944-5-git-send-email-wei.w.wang@intel.com>,
https://lkml.iu.edu/hypermail/linux/kernel/1708.2/00939.html) and "[PATCH
v14 5/5] virtio-balloon: VIRTIO_BALLOON_F_FREE_PAGE_VQ"
(<1502940416-42944-6-git-send-email-wei.w.wang@intel.com>).

Every ``--delay`` seconds, for each zone, each order from the highest down to
``--walk-order`` (v14's driver calls ``walk_free_mem_block(vb, 0, ...)``: every
order down to 0), and each migratetype: take the zone lock, call the callback
on every free block of the list (its pfn and size) without taking anything
off the list, drop the lock.  Nothing is marked, nothing is isolated: the
allocator is not touched at all, which was the point.

The callback runs under ``zone->lock`` with interrupts off, once per block:
``virtio_balloon_send_free_pages`` -> ``send_free_page_sg``, which does
``add_one_sg`` (the block's descriptor on the free page virtqueue),
``virtqueue_kick`` (tell the host) and takes back the buffers the host has
used.  So the host receives each block while the walk goes on: here the
block goes on the free page virtqueue as the walk reaches it
(:mod:`shmalloc.freepagevq`), the hypervisor stub takes it from there as
soon as the kick wakes it, and with ``--callback-mode discard`` punches it out of guest memory
while the walk continues and the workers allocate between the walk's holds.
Nothing waits for the host; a full ring drops the block, as v14 ignored
``add_one_sg``'s error (counted: ``vq_full``).

What the callback costs inside the hold: the ring entry and the handshake are
real (a few stores and a locked exchange), and each block then pays
``--callback-ns`` of running time (:func:`shmalloc.freehook.spin_running`),
standing in for ``virtqueue_kick``: a write to the device's notify register,
which traps to the host, a VM exit and entry.  By default the figure is
calibrated when the reporter starts as the cost of one message of one range
on a POSIX message queue (``mq_send``: a system call that makes a range
visible to another process; 0.4-0.9 µs on the project's Intel Xeon VM,
1.15-1.2 µs on the AMD EPYC one it was first measured on).  For
comparison, a VM exit in the literature: 1,344-1,376 cycles from VMRUN to
the exit back in KVM, 2,528-2,576 cycles for a whole ``KVM_RUN`` round trip
to user space (AMD, KVM, December 2020,
https://lkml.iu.edu/hypermail/linux/kernel/2012.2/00527.html), about 0.45
and 0.85 µs at 3 GHz; a kick through ``ioeventfd`` adds KVM's exit handling
and the eventfd's wake-up of the host thread to the first, without the trip
to user space.  The stand-in is of the same order: from about the first
figure to 2.7 times it.
(The real guest of ``shmalloc vm`` runs under TCG here, where a kick is no
hardware exit; its figure, once measured, is not this one.)  Every block
pays it, as if every kick exited: v14 kicked after every block, and only the
host can suppress the exit (virtio's notification suppression), which v14's
host side, not read here, may or may not have done; the figure is thus the
longest hold v14's walk could have, not a measured one.

That hold is what the thread objected to.  Linus Torvalds's NACK, as
Michael Tsirkin reported it (``../shared/seed-thread.txt``, lines 38-39):
"Linus nacked that one. He thinks invoking callbacks with lots of internal
mm locks is too fragile."  Michal Hocko (lines 45-51) found callbacks under
internal mm locks "not great either", but acceptably painful for one
"explicitly documented with restrictions and that the context is
essentially atomic with no access to particular struct pages and no
expensive operations possible".  ``holdtime-max`` grows with the number of
free blocks of every order.

``--callback-mode hint`` sends the blocks as hints: the host only records
them (as live migration does, to skip sending free pages).  Safe.

``--callback-mode discard`` asks the host to discard them: unsafe by
construction, David Hildenbrand's objection in the thread (lines 58-61:
"While a page is getting processed by the hypervisor (e.g. MADV_DONTNEED),
it must not get reused.").  Between a block's send and its discard a worker
can allocate the block, write it, and lose what it wrote; its canary reads
zero at the next check (use-after-discard).  ``--hv-latency`` widens the
window.

Deviations, each for a reason:

* only blocks of at least ``--report-order`` are sent: blocks below it are
  walked and paid for under the lock but not sent, so that what the host
  receives stays comparable with the other designs (``--report-order 0``
  sends everything, as v14 did);
* the kick is a calibrated cost, not a real exit (a process has none to
  take), and each block pays it (see above); the host is woken through a
  semaphore only when it waits for a kick;
* the free page virtqueue holds 1024 entries, the size QEMU gives its free
  page hint virtqueue; ``--capacity`` does not apply (v14 had no batches);
* re-reports are counted by the host, as it receives a block: one it
  discarded before and no longer holds any page of (a hint, which it only
  records, is never one): the reporter sends from inside the hold, where
  the ``mincore`` this check takes has no place;
* a pass is driven by a timer (``--delay``); v14's host asked for a pass
  (live migration's start), and a pass walked all zones once.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import posix_ipc

from shmalloc import shm, virtqueue
from shmalloc.config import jit
from shmalloc.freehook import spin_running
from shmalloc.freelist import free_list_first
from shmalloc.freepagevq import free_page_vq_add, set_free_page_vq_kind
from shmalloc.layout import (
    CALLER_REPORTER,
    MIGRATE_MOVABLE,
    MIGRATE_TYPES,
    RS_BLOCKS_WALKED,
    RS_CALLBACK_NS,
    RS_CYCLES,
)
from shmalloc.lock import zone_lock, zone_unlock

from .process import ReportingDesign, register

CALIBRATION_ROUNDS = 32
CALIBRATION_BATCH = 8                    # messages per timed batch (fs.mqueue.msg_max >= 10)


@jit
def walk_free_mem_block(frames, zs, agent, zone, order, mt, out_pfn, n, record, send,
                        cost_ticks):
    """One list of ``walk_free_mem_block`` under one zone-lock hold: the
    callback on every free block of ``free_area[order][mt]``: with ``send``
    (callback) the block goes on the free page virtqueue to the host at
    once; with ``record`` (isolate) its pfn is appended to ``out_pfn[n:]``;
    either way it pays ``cost_ticks`` of running time
    (:func:`shmalloc.freehook.spin_running`).  Returns (the new count,
    blocks visited)."""
    visited = 0
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    pfn = free_list_first(zs, zone, order, mt)
    while pfn >= 0:
        if record:
            if n == len(out_pfn):
                break
            out_pfn[n] = pfn
            n += 1
        if send:                             # add_one_sg, and the kick's wake-up
            free_page_vq_add(zs, agent, pfn, order)
        if cost_ticks > 0:                   # virtqueue_kick's VM exit (--callback-ns)
            spin_running(zs, cost_ticks)
        visited += 1
        pfn = frames[pfn]['next']
    zone_unlock(zs, agent, zone, CALLER_REPORTER)
    return n, visited


def calibrate_callback_ns(run_id: str) -> int:
    """Median cost of sending one one-range message on a private POSIX
    message queue (created and unlinked at once, so nothing is left behind)."""
    q = posix_ipc.MessageQueue(shm.object_name(run_id, "kick"), posix_ipc.O_CREX,
                               mode=shm.MODE, max_messages=CALIBRATION_BATCH,
                               max_message_size=virtqueue.message_size(1))
    q.unlink()
    msg = virtqueue.encode_report(virtqueue.KIND_HINT, 0, [0], [0], 1)
    per_send = []
    try:
        for _ in range(CALIBRATION_ROUNDS):
            t0 = time.perf_counter_ns()
            for _ in range(CALIBRATION_BATCH):
                q.send(msg)
            per_send.append((time.perf_counter_ns() - t0) / CALIBRATION_BATCH)
            for _ in range(CALIBRATION_BATCH):
                q.receive()
    finally:
        q.close()
    return int(statistics.median(per_send))


class WalkingDesign(ReportingDesign):
    """What callback and isolate share: a timer, and the free-list walk."""

    #: isolate walks only what it may isolate, and its callback only records
    walk_reported_only = False

    def __init__(self, machine, agent, device, opts):
        super().__init__(machine, agent, device, opts)
        most = max(1, machine.nr_pages >> opts.report_order)
        self.walk_pfn = np.zeros(most, np.int64)
        self.walk_order = np.zeros(most, np.int64)
        self.lowest = opts.report_order if self.walk_reported_only else opts.walk_order
        self.cost_ticks = 0

    def wait(self) -> bool:
        return self.sleep(self.opts.delay)          # a timer, no free-path hook

    #: the callback sends each block to the host (callback), or records it (isolate)
    sends = False

    def collect(self, zone: int) -> int:
        """Walk the zone's lists from the highest order down, one hold per
        list, the callback on each block of at least the report order;
        returns how many (pfn, order) ranges it recorded in
        ``walk_pfn``/``walk_order`` (none when it sends them)."""
        n = 0
        for order in range(self.m.max_order - 1, self.lowest - 1, -1):
            for mt in range(MIGRATE_TYPES):
                start = n
                wanted = order >= self.opts.report_order and mt == MIGRATE_MOVABLE
                n, visited = walk_free_mem_block(self.frames, self.zs, self.agent, zone, order,
                                                 mt, self.walk_pfn, n,
                                                 wanted and not self.sends,
                                                 wanted and self.sends, self.cost_ticks)
                self.walk_order[start:n] = order
                self.zs[self.stats + RS_BLOCKS_WALKED] += visited
        return n


@register("callback")
class Callback(WalkingDesign):
    """Wang v14 (see the module docstring)."""

    sends = True

    @staticmethod
    def message_kind(opts) -> int:
        return virtqueue.KIND_HINT if opts.callback_mode == "hint" else virtqueue.KIND_REPORT

    def start(self) -> None:
        set_free_page_vq_kind(self.zs, self.message_kind(self.opts))
        ns = self.opts.callback_ns
        if ns is None:
            ns = calibrate_callback_ns(self.m.run_id)
        self.zs[self.stats + RS_CALLBACK_NS] = ns
        self.cost_ticks = int(ns * self.m.ticks_per_sec / 1e9)

    def process(self) -> bool:
        """``report_free_page``: one walk over every zone; the blocks reach
        the host during the walk, and nothing waits for it."""
        self.zs[self.stats + RS_CYCLES] += 1
        for zone in range(self.m.nr_zones):
            if self.stopping():
                break
            self.collect(zone)
        return False

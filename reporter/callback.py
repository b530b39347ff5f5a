"""Wei Wang's free page hints, v14 (August 2017, "mm: support reporting free
page blocks" and "virtio-balloon: VIRTIO_BALLOON_F_FREE_PAGE_VQ"; the design
the 2019 thread kept coming back to): ``walk_free_mem_block``.

Every ``--delay`` seconds, for each zone, each order from the highest down to
``--walk-order`` (v14's driver calls ``walk_free_mem_block(vb, 0, ...)``: every
order down to 0), and each migratetype: take the zone lock, call the callback
on every free block of the list (its pfn and size) without taking anything
off the list, drop the lock.  Nothing is marked, nothing is isolated: the
allocator is not touched at all, which was the point.

The callback runs under ``zone->lock`` with interrupts off, once per block.
In v14 it is ``virtio_balloon_send_free_pages`` -> ``send_free_page_sg``:
``add_one_sg`` (a descriptor on the free page virtqueue), ``virtqueue_kick``
(a notification to the host, a VM exit when not suppressed) and a loop taking
back used buffers.  Here each visited block costs ``--callback-ns``
nanoseconds inside the hold (a busy wait on the lock's clock), by default
calibrated when the reporter starts as the cost of one message of one range
on a POSIX message queue, the model's virtqueue stand-in (``mq_send``: a
system call that makes a range visible to another process, as the kick does).
So the reporter's longest hold is the one v14 would have had, and it grows
with the number of free blocks of every order: Linus Torvalds's objection to
walking the free lists under ``zone->lock``.

``--callback-mode hint`` sends the blocks as hints: the host only records
them (as live migration does, to skip sending free pages).  Safe.

``--callback-mode discard`` asks the host to discard them: unsafe by
construction.  Between the walk and the discard a worker can allocate a
block, write it, and lose what it wrote; its canary reads zero at the next
check (use-after-discard).  ``--hv-latency`` widens the window.

Deviations, each for a reason:

* the ranges are handed to the host after the lock is dropped, in reports of
  ``--capacity`` ranges, and only blocks of at least ``--report-order`` are
  sent: blocks below it are walked and paid for under the lock but not sent,
  so that what the host receives stays comparable with the other designs
  (``--report-order 0`` sends everything, as v14 did);
* the per-block work is a calibrated cost, not a real enqueue: the stand-in
  queue carries whole reports to a Python process, which could not take one
  message per 4 KiB block at the guest's pace;
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
def walk_free_mem_block(frames, zs, agent, zone, order, mt, out_pfn, n, record, cost_ticks):
    """One list of ``walk_free_mem_block`` under one zone-lock hold: visit
    every free block of ``free_area[order][mt]``, paying ``cost_ticks`` of
    running time (:func:`shmalloc.freehook.spin_running`) per
    block (the callback), and with ``record`` append its pfn to
    ``out_pfn[n:]``.  Returns (the new count, blocks visited)."""
    visited = 0
    zone_lock(zs, agent, zone, CALLER_REPORTER)
    pfn = free_list_first(zs, zone, order, mt)
    while pfn >= 0:
        if record:
            if n == len(out_pfn):
                break
            out_pfn[n] = pfn                 # add_one_sg: the range for the host
            n += 1
        if cost_ticks > 0:                   # ... virtqueue_kick, virtqueue_get_buf
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

    def collect(self, zone: int) -> int:
        """Walk the zone's lists from the highest order down, one hold per
        list; returns how many (pfn, order) ranges of at least the report
        order are in ``walk_pfn``/``walk_order``."""
        n = 0
        for order in range(self.m.max_order - 1, self.lowest - 1, -1):
            for mt in range(MIGRATE_TYPES):
                start = n
                record = order >= self.opts.report_order and mt == MIGRATE_MOVABLE
                n, visited = walk_free_mem_block(self.frames, self.zs, self.agent, zone, order,
                                                 mt, self.walk_pfn, n, record, self.cost_ticks)
                self.walk_order[start:n] = order
                self.zs[self.stats + RS_BLOCKS_WALKED] += visited
        return n


@register("callback")
class Callback(WalkingDesign):
    """Wang v14 (see the module docstring)."""

    @staticmethod
    def message_kind(opts) -> int:
        return virtqueue.KIND_HINT if opts.callback_mode == "hint" else virtqueue.KIND_REPORT

    def start(self) -> None:
        ns = self.opts.callback_ns
        if ns is None:
            ns = calibrate_callback_ns(self.m.run_id)
        self.zs[self.stats + RS_CALLBACK_NS] = ns
        self.cost_ticks = int(ns * self.m.ticks_per_sec / 1e9)

    def process(self) -> bool:
        self.zs[self.stats + RS_CYCLES] += 1
        cap = self.opts.capacity
        for zone in range(self.m.nr_zones):
            n = self.collect(zone)
            for i in range(0, n, cap):               # the lock is not held here
                k = min(cap, n - i)
                self.batch_pfn[:k] = self.walk_pfn[i:i + k]
                self.batch_order[:k] = self.walk_order[i:i + k]
                self.report(k)
                if self.stopping():
                    return False
        return False

"""The free page virtqueue of Wang's v14 (``VIRTIO_BALLOON_F_FREE_PAGE_VQ``):
callback hands each free block to the host as its walk reaches it.

v14's driver (drivers/virtio/virtio_balloon.c, "[PATCH v14 5/5]
virtio-balloon: VIRTIO_BALLOON_F_FREE_PAGE_VQ", 17 August 2017) passes
``virtio_balloon_send_free_pages`` to ``walk_free_mem_block``; for every free
block, under the zone lock, ``send_free_page_sg`` does ``add_one_sg`` (one
descriptor for the block on the free page virtqueue), ``virtqueue_kick``
(tell the host), and takes back the buffers the host has used
(``virtqueue_get_buf`` in a loop).  It never waits for the host, and it
ignores what ``add_one_sg`` returns: with the ring full, the block is not
reported.

Here the ring is a region of ``zs`` (``H_OFF_VQ``: a header and
``H_VQ_SIZE`` entries, 1024 by default, the size QEMU gives its free page
hint virtqueue), shared by the reporter, which adds, and the hypervisor stub,
which takes:

``free_page_vq_add``        compiled, zone lock held, in the walk: the entry
                            (``pfn << 8 | order``), the avail index
                            published with a locked exchange, the block
                            counted as reported; the kick posts the run's
                            wake semaphore if the host waits for one.  A
                            full ring drops the block (counted in
                            ``vq_full``).
``free_page_vq_wait``       compiled, the stub: announce that it waits for a
                            kick, with a locked exchange, and return how
                            many entries are already there (a kick it would
                            otherwise miss).
``free_page_vq_take``       Python, the stub: the entries from the used index
                            to the avail index, then the used index moved
                            past them (the buffers returned).

The two locked exchanges order the handshake both ways: either the reporter
sees the host waiting and posts, or the host sees the new entry before it
sleeps.  The host's wake-up semaphore is the run's wake semaphore, which
callback's free path never posts (it has no hook).  The kick's cost to the
guest (a VM exit) is not here: :mod:`reporter.callback` pays it per block,
inside the hold.
"""

from __future__ import annotations

import numpy as np

from ._libc import atomic_xchg, sem_post
from .config import inline, jit
from .layout import (
    AG_SEM_AUX,
    H_OFF_VQ,
    H_VQ_SIZE,
    RS_PAGES_REPORTED,
    RS_RANGES_REPORTED,
    RS_REPORTS,
    RS_VQ_FULL,
    VQ_AVAIL,
    VQ_KIND,
    VQ_NOTIFY,
    VQ_RING,
    VQ_USED,
    agent_base,
    report_slot,
)


@inline
def free_page_vq_add(zs, agent, pfn, order):
    """``add_one_sg`` and ``virtqueue_kick`` for the free block at ``pfn``:
    True if it went on the ring, False if the ring was full (dropped, as
    v14's driver dropped it).  Called by the walk with the zone lock held."""
    vq = zs[H_OFF_VQ]
    avail = zs[vq + VQ_AVAIL]
    if avail - zs[vq + VQ_USED] >= zs[H_VQ_SIZE]:
        zs[report_slot(zs, RS_VQ_FULL)] += 1
        return False
    zs[vq + VQ_RING + avail % zs[H_VQ_SIZE]] = (pfn << 8) | order
    atomic_xchg(zs, vq + VQ_AVAIL, avail + 1)        # publish the entry, then look
    zs[report_slot(zs, RS_REPORTS)] += 1
    zs[report_slot(zs, RS_RANGES_REPORTED)] += 1
    zs[report_slot(zs, RS_PAGES_REPORTED)] += 1 << order
    if zs[vq + VQ_NOTIFY] != 0 and atomic_xchg(zs, vq + VQ_NOTIFY, 0) != 0:
        sem_post(zs[agent_base(zs, agent) + AG_SEM_AUX])    # the host sleeps: wake it
    return True


@jit
def free_page_vq_wait(zs):
    """The host is about to sleep until a kick: notifications on (a locked
    exchange, so the reporter sees it before the host reads the ring);
    returns the entries already waiting (then it must not sleep)."""
    vq = zs[H_OFF_VQ]
    atomic_xchg(zs, vq + VQ_NOTIFY, 1)
    return zs[vq + VQ_AVAIL] - zs[vq + VQ_USED]


def free_page_vq_take(zs) -> list[tuple[int, int]]:
    """The host takes every entry the guest has added, ``(pfn, order)`` in
    order, and returns their buffers (the used index moves past them)."""
    vq = int(zs[H_OFF_VQ])
    size = int(zs[H_VQ_SIZE])
    used, avail = int(zs[vq + VQ_USED]), int(zs[vq + VQ_AVAIL])
    words = zs[vq + VQ_RING + np.arange(used, avail) % size]
    zs[vq + VQ_NOTIFY] = 0                   # busy now: no kicks needed
    zs[vq + VQ_USED] = avail
    return list(zip((words >> 8).tolist(), (words & 0xFF).tolist()))


def free_page_vq_kind(zs) -> int:
    """What the guest asked the host to do with the ranges (virtqueue.KIND_*)."""
    return int(zs[int(zs[H_OFF_VQ]) + VQ_KIND])


def set_free_page_vq_kind(zs, kind: int) -> None:
    zs[int(zs[H_OFF_VQ]) + VQ_KIND] = kind

"""The host's page size: what a first write to guest memory costs the host.

A guest page is 4 KiB; the host backs guest memory with pages of its own.
QEMU's guest RAM is anonymous memory that QEMU marks ``MADV_HUGEPAGE``, so on
a host with transparent huge pages it sits on 2 MiB pages (the issue that
asked for this measured 96 % ``AnonHugePages``).  Then a discard gives back
a whole 2 MiB host page, and the next guest write anywhere in it takes one
host fault that zeroes 2 MiB: the refault the 2019 thread argued about
(Duyck's v9 cover letter blamed its -3.27 % on the host zeroing pages that
fault back in) is a 2 MiB event, not 512 events of 4 KiB.

``--host-pages 4k|2m`` (``MachineConfig.host_page_order`` 0 or 9) picks the
host's page.  With 4k the guest memory object is a POSIX shared-memory
object in /dev/shm, which gets no huge pages here; with 2m it is a file on a
tmpfs of its own mounted ``huge=always`` (:mod:`shmalloc.shm`), and the
host's faults really are 2 MiB.  What follows the page size:

* *refaults* (:func:`host_fault`): counted per host page.  With 4 KiB host
  pages a page knows it itself (written before, PG_TOUCHED, and zero now).
  With 2 MiB host pages the guest's pages cannot tell (the other 511 pages of
  a host page refaulted by a neighbour read zero too), so the machine keeps
  one state per host page (``HP_*``, :mod:`shmalloc.layout`): the stub marks
  a host page discarded as it punches it out (:func:`host_pages_discarded`),
  the first writer marks it resident again and counts the refault;
* *first touches* (:func:`first_touches`): host pages backed for the first
  time, the other host faults a guest's writes take;
* the discards themselves: a report order below the host page's would punch
  parts of host pages (the kernel splits a huge page then), which the model
  does not follow, so ``--host-pages 2m`` needs ``--report-order`` >= 9;
* the unit cost of a refault (``shmalloc bench``'s ``refault``, per host
  page) and so the attributed cost; host-resident memory (``st_blocks`` of
  the object) moves in steps of the host page by itself.

Under callback/discard (unsafe by design) a worker can write a host page
between the stub's mark and its punch: its refault is then counted at that
write, before the host takes it, and not again (or, when the write falls
inside the stub's marking, which is not atomic against it, not at all).  And a worker that checks
the canaries of pages discarded under it (a use-after-discard) reads the host
page back in, unmarked: that fault is counted at the next write, as with 4
KiB host pages, where a zeroed page refaults when it is next written.
"""

from __future__ import annotations

import numpy as np

from ._libc import atomic_xchg, mincore_vector
from .config import PAGE_SHIFT, PAGE_SIZE, inline
from .layout import (
    H_HOST_PAGE_ORDER,
    HP_DISCARDED,
    HP_NEVER,
    HP_RESIDENT,
    PG_TOUCHED,
    host_page_slot,
)

#: --host-pages: name -> order of the host page in guest pages
HOST_PAGES = {"4k": 0, "2m": 9}
HOST_PAGE_NAMES = {order: name for name, order in HOST_PAGES.items()}


def host_page_bytes(order: int) -> int:
    return PAGE_SIZE << order


@inline
def host_fault(frames, zs, mem, page, word):
    """Does the write about to go to ``page`` (at ``mem[word]``) refault a
    host page?  Called once per page, just before the page's first write
    after its allocation.

    4 KiB host pages: the page was written before (PG_TOUCHED) and reads
    zero now, so the host discarded it since.  2 MiB host pages: the host
    page's state is HP_DISCARDED; the first writer flips it to HP_RESIDENT
    with an atomic exchange, so two workers writing into one discarded host
    page count one refault, as the host takes one fault that zeroes it.
    The plain read first keeps the locked instruction off the path of a
    resident host page (almost every write)."""
    if zs[H_HOST_PAGE_ORDER] == 0:
        return mem[word] == 0 and (frames[page]['flags'] & PG_TOUCHED) != 0
    slot = host_page_slot(zs, page)
    if zs[slot] == HP_RESIDENT:
        return False
    return atomic_xchg(zs, slot, HP_RESIDENT) == HP_DISCARDED


def host_pages_discarded(machine, pfn: int, npages: int) -> int:
    """The hypervisor is about to punch ``[pfn, pfn + npages)`` out of guest
    memory: mark each host page in it that is resident as discarded (one it
    never backed stays so: the next write there is a first touch, not a
    refault).  ``npages`` covers whole host pages (--report-order >= the
    host page's order).  Returns the host pages marked.

    Not atomic against a worker's exchange in :func:`host_fault`: no worker
    writes a block the host is discarding, except under a design that
    discards what workers own (callback/discard), where the count may be
    off by the race (see the module docstring)."""
    return _host_pages_move(machine, pfn, npages, HP_RESIDENT, HP_DISCARDED)


def host_pages_restored(machine, pfn: int, npages: int) -> int:
    """The discard of ``[pfn, pfn + npages)`` failed: what
    :func:`host_pages_discarded` marked is resident after all."""
    return _host_pages_move(machine, pfn, npages, HP_DISCARDED, HP_RESIDENT)


def _host_pages_move(machine, pfn: int, npages: int, old: int, new: int) -> int:
    states = host_page_states(machine)
    if states is None:
        return 0                      # a 4 KiB page says it itself (host_fault)
    order = machine.layout.host_page_order
    span = states[pfn >> order: (pfn + npages) >> order]
    hit = span == old
    span[hit] = new
    return int(hit.sum())


def host_page_states(machine) -> np.ndarray | None:
    """The HP_* state of every host page (a view), or None with 4 KiB host
    pages."""
    lay = machine.layout
    if not lay.host_page_order:
        return None
    return machine.zs[lay.off_host_pages: lay.off_host_pages + lay.nr_host_pages]


def first_touches(machine) -> int:
    """Host pages the guest's writes have made the host back for the first
    time, so far (each was one host fault)."""
    states = host_page_states(machine)
    if states is None:
        return int(np.count_nonzero(machine.frames["flags"] & PG_TOUCHED))
    return int(np.count_nonzero(states != HP_NEVER))


def unbacked_but_resident(machine) -> list[str]:
    """With 2 MiB host pages: host pages the model says the host does not
    back (never touched, or discarded) that are resident all the same, each
    a line (the invariant checker's; empty with 4 KiB host pages)."""
    states = host_page_states(machine)
    if states is None:
        return []
    per_host_page = resident_map(machine).reshape(len(states), -1).sum(axis=1)
    out = []
    for h in np.flatnonzero((states != HP_RESIDENT) & (per_host_page > 0)):
        what = "never touched" if states[h] == HP_NEVER else "discarded"
        out.append(f"host page {int(h)} (pfn {int(h) << machine.layout.host_page_order}) is "
                   f"{what} for the model but {int(per_host_page[h])} of its pages are "
                   "resident on the host")
    return out


def resident_map(machine) -> np.ndarray:
    """One byte per guest page: 1 where the host backs it (mincore(2))."""
    return mincore_vector(machine.mem.ctypes.data, machine.nr_pages << PAGE_SHIFT, PAGE_SIZE)


def shmem_pmd_mapped_bytes(pid: int | str = "self") -> int:
    """Shared memory that process ``pid`` maps with PMD-sized (2 MiB) pages
    (``ShmemPmdMapped`` of /proc/PID/smaps_rollup); 0 if it cannot be read.
    In a worker or the bench only the guest memory can be such."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("ShmemPmdMapped:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0

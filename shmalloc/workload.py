"""Workloads: what a worker process does with its memory, compiled.

``page_fault1``
    will-it-scale's page_fault1: allocate ``chunk`` order-0 pages one by one,
    writing each (the page fault), then free them all in allocation order
    (munmap); repeat.  will-it-scale maps 128 MiB per task.
``thp``
    the same with order-9 blocks, every 4 KiB page of each written, as
    page_fault1 does under THP (Duyck's benchmark for the reporting patches).
``random``
    a seeded mix of orders around a per-worker target working set: below the
    target it allocates (order 0: 60 %, 1 and 2: 10 % each, 3: 5 %, 4..8:
    10 %, 9: 5 %); at the target it frees a random block, so lifetimes are
    memoryless; one block in five is long-lived and survives nine picks in ten.
``hog``
    allocate a share of the guest, hold it, free everything, stay idle: how
    fast does the host get its memory back? (:func:`hog_alloc` here, the
    phases in the worker process.)
``phased``
    ``random`` for the first 40 % of the run (grow, churn), then free
    everything (shrink), stay idle until 70 %, then grow and churn again:
    throughput, reclaim and reuse of reclaimed memory in one run.

``random`` and ``phased`` take a block of order n from the buddy allocator
(``--blocks buddy``, the default: the kernel's own and drivers' multi-page
allocations), or as a user program gets it (``--blocks user``,
:func:`run_random_user`): 2^n order-0 pages, one page fault each, freed page
by page at munmap, each mmu_gather batch of them last page first
(:func:`munmap_index`).

Every allocated page gets a canary in its first 8 bytes: ``(agent + 1) << 48
| generation << 32 | pfn``.  Before writing it the worker reads the page: zero
in a page that was written before (PG_TOUCHED) means the host discarded it
since, and this write refaults.  Before freeing, every page's canary is
checked: zero means the page was discarded while the worker owned it
(use-after-discard); any other foreign value means the allocator gave the page
to two owners.  Both are counted, never hidden.  A refault is counted per
host page (:func:`shmalloc.hostpage.host_fault`): with 2 MiB host pages
(``--host-pages 2m``) the first write into a discarded host page refaults it
whole, and the writes to its other pages are ordinary writes.

Every kernel returns when the machine's stop flag is set or the agent's
operation budget ``max_ops`` is spent (< 0: no budget), leaving the blocks it
still holds in ``held_pfn[:n]``/``held_order[:n]`` and returning ``n``.
"""

from __future__ import annotations

import numpy as np

from ._libc import bit_length, ticks
from .config import WORDS_PER_PAGE, inline, jit
from .hostpage import host_fault
from .layout import (
    H_HOST_PAGE_ORDER,
    H_STOP,
    H_TICKS_PER_SEC,
    HIST_ALLOC,
    HIST_FREE,
    NR_HIST_BUCKETS,
    PG_TOUCHED,
    WC_ALLOC_FAILURES,
    WC_ALLOC_NS_MAX,
    WC_ALLOCS,
    WC_BLOCKS_WRITTEN,
    WC_FOREIGN_CANARY,
    WC_FREE_ERRORS,
    WC_FREE_NS_MAX,
    WC_FREES,
    WC_ITERATIONS,
    WC_OPS,
    WC_PAGES_ALLOCATED,
    WC_PAGES_FREED,
    WC_REFAULT_STREAK,
    WC_REFAULTS,
    WC_SAMPLE_DROPPED,
    WC_SAMPLE_REFAULT_TICKS,
    WC_SAMPLE_REFAULTS,
    WC_SAMPLE_RESIDENT,
    WC_SAMPLE_RESIDENT_TICKS,
    WC_USE_AFTER_DISCARD,
    WS_HIST,
    wstats_base,
)
from .page_alloc import alloc_pages, free_pages_from

WORKLOADS = ("page_fault1", "thp", "random", "hog", "phased")
#: write_block times one block in this many (one in REFAULT_STREAK_EVERY
#: after a block that refaulted): 2 TSC reads a page of the block, 10 ns
#: each, so about 0.3 ns per order-0 page written on average
REFAULT_SAMPLE_EVERY = 64
REFAULT_STREAK_EVERY = 8
PHASED_SHRINK_AT = 0.4      # phased: free everything at 40 % of the run
PHASED_REGROW_AT = 0.7      # ... and grow again at 70 %
THP_ORDER = 9


@inline
def canary(agent, gen, pfn):
    return ((agent + 1) << 48) | ((gen & 0xFFFF) << 32) | (pfn & 0xFFFFFFFF)


@inline
def hist_index(ns):
    """Log-bucketed latency: 4 buckets per power of two (values < 4 exact)."""
    if ns < 4:
        return max(ns, 0)
    msb = bit_length(ns) - 1
    idx = msb * 4 + ((ns >> (msb - 2)) & 3)
    return min(idx, NR_HIST_BUCKETS - 1)


@inline
def record_latency(zs, ws, hist, max_slot, t0, t1, ns_per_tick):
    ns = np.int64((t1 - t0) * ns_per_tick)
    zs[ws + WS_HIST + hist * NR_HIST_BUCKETS + hist_index(ns)] += 1
    zs[ws + max_slot] = max(zs[ws + max_slot], ns)


@inline
def should_stop(zs, ws, max_ops):
    if zs[H_STOP] != 0:
        return True
    return max_ops >= 0 and zs[ws + WC_OPS] >= max_ops


@inline
def past(deadline):
    """A deadline in ticks has passed (0: no deadline)."""
    return deadline > 0 and ticks() >= deadline


@inline
def timed_alloc(frames, zs, agent, order, ws, ns_per_tick):
    t0 = ticks()
    pfn = alloc_pages(frames, zs, agent, order)
    record_latency(zs, ws, HIST_ALLOC, WC_ALLOC_NS_MAX, t0, ticks(), ns_per_tick)
    zs[ws + WC_OPS] += 1
    if pfn >= 0:
        zs[ws + WC_ALLOCS] += 1
        zs[ws + WC_PAGES_ALLOCATED] += 1 << order
    else:
        zs[ws + WC_ALLOC_FAILURES] += 1
    return pfn


@inline
def write_block(frames, zs, mem, agent, pfn, order, ws):
    """The worker's first touch of a new block: count refaults, write
    canaries.  One block in :data:`REFAULT_SAMPLE_EVERY`, or in
    :data:`REFAULT_STREAK_EVERY` right after a block that refaulted (refaults
    come in runs: the pages of one discarded block), is written by
    :func:`write_block_timed` instead, which times each write; what a
    refault costs in this run is the difference of the two means it keeps
    (:mod:`launcher.cost`).  The rest of the time the price is a counter and
    a branch per block."""
    zs[ws + WC_BLOCKS_WRITTEN] += 1
    every = REFAULT_STREAK_EVERY if zs[ws + WC_REFAULT_STREAK] != 0 else REFAULT_SAMPLE_EVERY
    if zs[ws + WC_BLOCKS_WRITTEN] % every == 0:
        refaults = write_block_timed(frames, zs, mem, agent, pfn, order, ws)
    else:
        gen = np.int64(frames[pfn]['gen'])
        refaults = 0
        for page in range(pfn, pfn + (1 << order)):
            word = page * WORDS_PER_PAGE
            if host_fault(frames, zs, mem, page, word):
                refaults += 1
            mem[word] = canary(agent, gen, page)
            frames[page]['flags'] |= PG_TOUCHED
    zs[ws + WC_REFAULT_STREAK] = 1 if refaults > 0 else 0
    zs[ws + WC_REFAULTS] += refaults


@inline
def write_block_timed(frames, zs, mem, agent, pfn, order, ws):
    """:func:`write_block`'s loop with each page's read-then-write timed by
    the TSC, for the pages written before (a first touch of a page never
    written is a fault too, but not a refault, and stays out): a refault's
    ticks and a resident write's ticks are summed apart, under the run's own
    conditions (the host discarding beside the worker, the other worker,
    the reporter).  A write that took longer than 500 us was preempted, not
    faulting, and is only counted (a refault takes 2-4 us here, a stretch of
    time off the cpu a scheduler slice, 0.75 ms and up).  With 2 MiB host
    pages a refault zeroes 2 MiB (about 0.3 ms in ``shmalloc bench``), so the
    cut is 10 ms there: a preemption that short is counted as refault time,
    which errs towards charging refaults more.  Returns the refaults."""
    limit = zs[H_TICKS_PER_SEC] // 2000
    if zs[H_HOST_PAGE_ORDER] != 0:
        limit = zs[H_TICKS_PER_SEC] // 100
    gen = np.int64(frames[pfn]['gen'])
    refaults = 0
    for page in range(pfn, pfn + (1 << order)):
        word = page * WORDS_PER_PAGE
        touched = (frames[page]['flags'] & PG_TOUCHED) != 0
        t0 = ticks()
        refault = host_fault(frames, zs, mem, page, word)
        mem[word] = canary(agent, gen, page)
        dt = ticks() - t0
        frames[page]['flags'] |= PG_TOUCHED
        if refault:
            refaults += 1
        if not touched:
            continue
        if dt > limit:
            zs[ws + WC_SAMPLE_DROPPED] += 1
        elif refault:
            zs[ws + WC_SAMPLE_REFAULT_TICKS] += dt
            zs[ws + WC_SAMPLE_REFAULTS] += 1
        else:
            zs[ws + WC_SAMPLE_RESIDENT_TICKS] += dt
            zs[ws + WC_SAMPLE_RESIDENT] += 1
    return refaults


@inline
def check_and_free(frames, zs, mem, agent, pfn, order, ws, ns_per_tick):
    """Check every canary of the block, then free it (timed)."""
    check_and_free_from(frames, zs, mem, agent, agent, pfn, order, ws, ns_per_tick)


@inline
def check_and_free_from(frames, zs, mem, agent, holder, pfn, order, ws, ns_per_tick):
    """:func:`check_and_free` of a block ``holder`` allocated and wrote
    (its canaries name ``holder``), freed by ``agent`` into its own lists
    (:func:`~shmalloc.page_alloc.free_pages_from`)."""
    gen = np.int64(frames[pfn]['gen'])
    for page in range(pfn, pfn + (1 << order)):
        v = mem[page * WORDS_PER_PAGE]
        if v != canary(holder, gen, page):
            if v == 0:
                zs[ws + WC_USE_AFTER_DISCARD] += 1
            else:
                zs[ws + WC_FOREIGN_CANARY] += 1
    t0 = ticks()
    err = free_pages_from(frames, zs, agent, holder, pfn, order)
    record_latency(zs, ws, HIST_FREE, WC_FREE_NS_MAX, t0, ticks(), ns_per_tick)
    zs[ws + WC_OPS] += 1
    if err == 0:
        zs[ws + WC_FREES] += 1
        zs[ws + WC_PAGES_FREED] += 1 << order
    else:
        zs[ws + WC_FREE_ERRORS] += 1


@jit
def run_chunks(frames, zs, mem, agent, order, chunk, max_ops, ns_per_tick, held_pfn,
               held_order):
    """page_fault1 (order 0) and thp (order 9): rounds of {allocate and write
    ``chunk`` blocks; free them in allocation order}.  Out of memory ends the
    allocation half of a round early."""
    ws = wstats_base(zs, agent)
    while True:
        n = 0
        while n < chunk:
            if should_stop(zs, ws, max_ops):
                return n
            pfn = timed_alloc(frames, zs, agent, order, ws, ns_per_tick)
            if pfn < 0:
                break
            write_block(frames, zs, mem, agent, pfn, order, ws)
            held_pfn[n] = pfn
            held_order[n] = order
            n += 1
        for i in range(n):
            if should_stop(zs, ws, max_ops):
                for j in range(i, n):                 # keep the unfreed ones, in order
                    held_pfn[j - i] = held_pfn[j]
                    held_order[j - i] = held_order[j]
                return n - i
            check_and_free(frames, zs, mem, agent, held_pfn[i], order, ws, ns_per_tick)
        zs[ws + WC_ITERATIONS] += 1


@inline
def random_order(max_order):
    r = np.random.random()
    if r < 0.60:
        order = 0
    elif r < 0.70:
        order = 1
    elif r < 0.80:
        order = 2
    elif r < 0.85:
        order = 3
    elif r < 0.95:
        order = np.random.randint(4, 9)
    else:
        order = 9
    return min(order, max_order - 1)


@jit
def run_random(frames, zs, mem, agent, target_pages, max_order, max_ops, seed, ns_per_tick,
               held_pfn, held_order, held_long, deadline):
    """The ``random`` workload (see the module docstring), until the stop
    flag, the operation budget or ``deadline`` (ticks; 0: none)."""
    np.random.seed(seed)
    ws = wstats_base(zs, agent)
    n = 0
    pages = 0
    cap = len(held_pfn)
    while not should_stop(zs, ws, max_ops) and not past(deadline):
        if pages < target_pages and n < cap:
            order = random_order(max_order)
            pfn = timed_alloc(frames, zs, agent, order, ws, ns_per_tick)
            if pfn >= 0:
                write_block(frames, zs, mem, agent, pfn, order, ws)
                held_pfn[n] = pfn
                held_order[n] = order
                held_long[n] = 1 if np.random.random() < 0.2 else 0
                n += 1
                pages += 1 << order
                continue
            if n == 0:
                continue                     # nothing to give back; try again
        j = np.random.randint(0, n)
        if held_long[j] != 0 and pages < 2 * target_pages and np.random.random() < 0.9:
            continue
        order = held_order[j]
        check_and_free(frames, zs, mem, agent, held_pfn[j], order, ws, ns_per_tick)
        pages -= 1 << order
        n -= 1
        held_pfn[j] = held_pfn[n]
        held_order[j] = held_order[n]
        held_long[j] = held_long[n]
        if n == 0 or pages < target_pages:
            zs[ws + WC_ITERATIONS] += 1
    return n


#: munmap's free order (mm/mmu_gather.c, mm/swap.c, 5.7 and 6.1 alike): the
#: pages zapped go into the mmu_gather's batches, the on-stack one of
#: MMU_GATHER_BUNDLE (8) pages, then page-sized ones of MAX_GATHER_BATCH
#: ((4096 - 16) / 8 = 510) pointers; at the flush each batch goes, in
#: order, to release_pages(), which puts every page on its list with
#: list_add(), at the head, so free_unref_page_list() frees each batch's
#: pages last first
MMU_GATHER_BUNDLE = 8
MAX_GATHER_BATCH = 510


@inline
def munmap_index(i, n):
    """Which page, in fault (address) order, the i-th free of a munmap of
    ``n`` pages frees: each mmu_gather batch reversed, the batches in order."""
    first = min(n, MMU_GATHER_BUNDLE)
    if i < first:
        return first - 1 - i
    start = first + (i - first) // MAX_GATHER_BATCH * MAX_GATHER_BATCH
    end = min(start + MAX_GATHER_BATCH, n)
    return start + end - 1 - i


@jit
def free_user_block(frames, zs, mem, agent, head, pg_pfn, pg_next, free_slots, top, ws,
                    ns_per_tick):
    """munmap of a user mapping: check and free its order-0 pages in the
    order munmap frees them (:func:`munmap_index`), giving their slots back;
    returns the new top of the slot stack.  The slots go on the stack first,
    in fault order, so the frees can index them (a slot is reused only by a
    later fault)."""
    top0 = top
    s = head
    while s >= 0:
        free_slots[top] = s
        top += 1
        s = pg_next[s]
    n = top - top0
    for i in range(n):
        check_and_free(frames, zs, mem, agent, pg_pfn[free_slots[top0 + munmap_index(i, n)]], 0,
                       ws, ns_per_tick)
    return top


@inline
def schedule_due(sched_t, sched_k, k, si):
    """When a schedule of page faults (``sched_k[i]`` made by ``sched_t[i]``
    ticks, both rising) has made ``k``: linear between its two points around
    k, searched from point ``si`` on; returns (ticks, the point to search
    from next), ticks -1 past the schedule's end."""
    last = len(sched_t) - 1
    while si < last and sched_k[si + 1] < k:
        si += 1
    if si >= last:
        return -1, si
    dk = sched_k[si + 1] - sched_k[si]
    if dk <= 0:                   # k at or before a flat start
        return sched_t[si], si
    return sched_t[si] + (k - sched_k[si]) * (sched_t[si + 1] - sched_t[si]) // dk, si


@jit
def run_random_user(frames, zs, mem, agent, target_pages, max_order, max_ops, seed, ns_per_tick,
                    blk_head, blk_order, blk_long, pg_pfn, pg_next, free_slots, deadline,
                    pace, sched_t, sched_k, t_run0):
    """``random`` with user mappings (``--blocks user``): the same draws as
    :func:`run_random`, but a block of order n is what a user program gets
    from mmap of 2^n pages, each written once: 2^n order-0 allocations
    through the pcp lists (one page fault each), freed one by one at its
    munmap, in munmap's order (:func:`munmap_index`).  A user program
    cannot ask the buddy allocator for an order; its frees make order-0
    pages, which merge into blocks of the report order only where every
    buddy is free too.

    Blocks are ``blk_*[:n]``; a block's pages are a list of slots in
    ``pg_pfn``/``pg_next`` from ``blk_head`` (-1 ends it); ``free_slots`` is
    the stack of unused slots.  A mapping that cannot be faulted in whole
    (out of memory) gives back what it got and counts as a failed
    allocation.  ``pace`` > 0 (ticks, ``--page-rate``): the k-th page fault
    waits until ``pace * k`` ticks after the start, spinning, as a guest
    whose page faults take that long (TCG's).  A schedule instead
    (``sched_t``/``sched_k`` not empty: ticks since ``t_run0``, the run's
    start, and the page faults a real guest's worker had made by then,
    rising): the run's k-th page fault, counting every phase, waits until
    the schedule reaches k, interpolated between its points, and is no
    longer paced past its last point.  Returns ``n``, the blocks still
    held."""
    np.random.seed(seed)
    ws = wstats_base(zs, agent)
    t_pace = ticks()
    faults = 0
    nsched = len(sched_t)
    si = 0
    nslots = len(pg_pfn)
    for s in range(nslots):
        free_slots[s] = nslots - 1 - s
    top = nslots
    n = 0
    pages = 0
    cap = len(blk_head)
    while not should_stop(zs, ws, max_ops) and not past(deadline):
        if pages < target_pages and n < cap:
            order = random_order(max_order)
            count = 1 << order
            head = -1
            prev = -1
            got = 0
            while got < count and top > 0:
                if pace > 0:
                    faults += 1
                    while ticks() < t_pace + pace * faults and not should_stop(zs, ws, max_ops):
                        pass
                elif nsched > 1:
                    due = schedule_due(sched_t, sched_k, zs[ws + WC_PAGES_ALLOCATED] + 1, si)
                    si = due[1]
                    # the guest made no fault from here to the phase's end
                    # (phased's idle): the deadline ends the wait
                    while due[0] >= 0 and ticks() < t_run0 + due[0] \
                            and not should_stop(zs, ws, max_ops) and not past(deadline):
                        pass
                pfn = timed_alloc(frames, zs, agent, 0, ws, ns_per_tick)
                if pfn < 0:
                    break
                write_block(frames, zs, mem, agent, pfn, 0, ws)
                top -= 1
                s = free_slots[top]
                pg_pfn[s] = pfn
                pg_next[s] = -1
                if prev < 0:
                    head = s
                else:
                    pg_next[prev] = s
                prev = s
                got += 1
            if got == count:
                blk_head[n] = head
                blk_order[n] = order
                blk_long[n] = 1 if np.random.random() < 0.2 else 0
                n += 1
                pages += count
                continue
            top = free_user_block(frames, zs, mem, agent, head, pg_pfn, pg_next, free_slots,
                                  top, ws, ns_per_tick)
            if n == 0:
                continue
        j = np.random.randint(0, n)
        if blk_long[j] != 0 and pages < 2 * target_pages and np.random.random() < 0.9:
            continue
        top = free_user_block(frames, zs, mem, agent, blk_head[j], pg_pfn, pg_next, free_slots,
                              top, ws, ns_per_tick)
        pages -= 1 << blk_order[j]
        n -= 1
        blk_head[j] = blk_head[n]
        blk_order[j] = blk_order[n]
        blk_long[j] = blk_long[n]
        if n == 0 or pages < target_pages:
            zs[ws + WC_ITERATIONS] += 1
    return n


@jit
def user_pages(blk_head, n, pg_pfn, pg_next, out_pfn, out_order):
    """The pages of user blocks ``blk_head[:n]`` as order-0 entries of
    ``out_*``, block by block, each in the order its munmap frees them
    (:func:`munmap_index`), for the frees of the shrink and the exit;
    returns how many.  ``out_order`` (int64, as ``out_pfn``) holds each
    block's pages in fault order for a moment before it is zeroed."""
    k = 0
    for b in range(n):
        k0 = k
        s = blk_head[b]
        while s >= 0:
            out_order[k] = pg_pfn[s]          # fault order, for a moment
            k += 1
            s = pg_next[s]
        for i in range(k - k0):
            out_pfn[k0 + i] = out_order[k0 + munmap_index(i, k - k0)]
        for i in range(k0, k):
            out_order[i] = 0
    return k


@jit
def hog_alloc(frames, zs, mem, agent, target_pages, max_ops, ns_per_tick, held_pfn, held_order):
    """``hog``, first phase: allocate and write order-0 pages up to
    ``target_pages`` (or until memory runs out).  Returns how many it holds."""
    ws = wstats_base(zs, agent)
    n = 0
    while n < target_pages and not should_stop(zs, ws, max_ops):
        pfn = timed_alloc(frames, zs, agent, 0, ws, ns_per_tick)
        if pfn < 0:
            break
        write_block(frames, zs, mem, agent, pfn, 0, ws)
        held_pfn[n] = pfn
        held_order[n] = 0
        n += 1
    return n


@jit
def free_blocks(frames, zs, mem, agent, held_pfn, held_order, n, ns_per_tick):
    """Check and free ``held_*[:n]`` (a workload's end, or hog's free phase)."""
    ws = wstats_base(zs, agent)
    for i in range(n):
        check_and_free(frames, zs, mem, agent, held_pfn[i], held_order[i], ws, ns_per_tick)

"""The invariant checker: walks everything, returns readable violations.

Expensive whole-structure validation (mimalloc's ``mi_heap_validate``, the
kernel's ``VM_BUG_ON`` made exhaustive), run on a quiescent machine: at the
end of every run and after every concurrent test.  The invariants are those
written above :data:`shmalloc.layout.FRAME_DTYPE`:

* the block heads tile every zone: each page in exactly one block, every
  block aligned to its order and inside its zone;
* each free list is a well-formed doubly linked list of PS_BUDDY heads of its
  order, on the list of their pageblock's migratetype, as long as its
  ``nr_free``; every PS_BUDDY head is on exactly one list;
* no free head outside an isolated pageblock has a buddy that is a free
  head of the same order outside one (it would have merged; isolation moves
  free blocks to the ISOLATE list without merging them, as 5.7's
  ``move_freepages_block``, so isolated buddies may stand apart);
* each pcp list holds order-0 PS_PCP pages of its agent and zone, as many as
  its count says; every PS_PCP page is on its owner's list;
* every allocated block belongs to a valid agent and, when the holders'
  own records are given, to exactly the agent that holds it (a block two
  agents hold is a double allocation);
* PG_REPORTED only on free heads of at least the report order;
* the state the core keeps for a design is consistent: the boundary design's
  per-order Reported counts and its Reported runs at the list tails (from
  a report order of MAX_ORDER - 2 up, as v9 had it; see the comment in
  :func:`check`), the
  bitmap design's count of set bits, and hostscan's host-reclaimed frames
  wholly free;
* with 2 MiB host pages, the model's record of what the host backs holds
  on the host (mincore): a host page never touched is not resident, nor is
  one discarded since, unless a worker read pages discarded under it (a
  use-after-discard, which faults the host page back in);
* the zone lock is free (semaphore value 1) and no owner is recorded.

Designs add their own checks through ``extra_checks`` (callables taking the
machine and returning messages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .hostpage import unbacked_but_resident
from .layout import (
    H_BITMAP_WORDS,
    H_REPORT_ORDER,
    H_STRATEGY,
    HOOK_BITMAP,
    HOOK_BOUNDARY,
    HOOK_HOSTSCAN,
    MIGRATE_ISOLATE,
    MIGRATE_TYPES,
    MIGRATETYPE_NAMES,
    PCP_COUNT,
    PCP_HEAD,
    PCP_TAIL,
    PG_REPORTED,
    PS_ALLOC,
    PS_BUDDY,
    PS_INFLIGHT,
    PS_PCP,
    STATE_NAMES,
    WC_USE_AFTER_DISCARD,
    Z_BITMAP_COUNT,
    Z_FREE_HEAD,
    Z_FREE_TAIL,
    Z_LOCK_PID,
    Z_NR_FREE,
    Z_REPORT_FLAGS,
    Z_REPORTED,
    ZRF_ACTIVE,
)
from .snapshot import heads, walk

MAX_MESSAGES = 50


class _Report:
    def __init__(self, limit: int):
        self.messages: list[str] = []
        self.limit = limit
        self.dropped = 0

    def __call__(self, msg: str) -> None:
        if len(self.messages) < self.limit:
            self.messages.append(msg)
        else:
            self.dropped += 1

    def result(self) -> list[str]:
        if self.dropped:
            return self.messages + [f"... and {self.dropped} more violations"]
        return self.messages


def check(machine, held: dict[int, Iterable[tuple[int, int]]] | None = None,
          allow_inflight: bool = False, check_locks: bool = True,
          extra_checks: Iterable[Callable] = (), limit: int = MAX_MESSAGES) -> list[str]:
    """Check every invariant of a quiescent ``machine``; [] when all hold.

    ``held`` maps agents to the (pfn, order) blocks they believe they hold.
    ``allow_inflight`` accepts blocks in a design's in-flight batch (a run
    that was stopped mid-cycle); a cleanly stopped run has none.
    """
    bad = _Report(limit)
    f = machine.frames
    zs = machine.zs
    lay = machine.layout
    n_agents = lay.nr_agents
    state = f["state"]
    order = f["order"]
    pb_mt = zs[lay.off_pageblock: lay.off_pageblock + lay.nr_pageblocks]
    hook = int(zs[H_STRATEGY])
    report_order = int(zs[H_REPORT_ORDER])
    # Duyck v9 keeps a list's Reported blocks in one run at its tail where
    # nothing lands at the tail outside a reporting cycle: get_unreported_tail
    # gives the list's own tail while the zone is not being reported, so
    # below MAX_ORDER - 2 a free that buddy_merge_likely sends to the tail
    # lands behind the run (v9 finds it again by probing the tail first).
    # v9 reported from pageblock order, MAX_ORDER - 2 on x86-64.
    reported_run = hook == HOOK_BOUNDARY and report_order >= lay.max_order - 2

    # -- heads tile every zone ---------------------------------------------
    hidx = heads(machine)
    horder = order[hidx].astype(np.int64)
    for p in hidx[(horder < 0) | (horder >= lay.max_order)]:
        bad(f"pfn {p}: {STATE_NAMES.get(int(state[p]), state[p])} head with order "
            f"{int(order[p])} outside 0..{lay.max_order - 1}")
    horder = horder.clip(0, lay.max_order - 1)
    size = np.left_shift(np.int64(1), horder)
    for p in hidx[(hidx & (size - 1)) != 0]:
        bad(f"pfn {p}: order-{int(order[p])} block head is not aligned to its order")
    for z in range(lay.nr_zones):
        start, end = machine.zone_range(z)
        sel = (hidx >= start) & (hidx < end)
        zh, zsz = hidx[sel], size[sel]
        if len(zh) == 0:
            bad(f"zone {z}: no block heads at all (pages {start}..{end - 1} in no block)")
            continue
        if zh[0] != start:
            bad(f"zone {z}: pages {start}..{zh[0] - 1} belong to no block")
        ends = zh + zsz
        for i in np.flatnonzero(ends[:-1] != zh[1:])[:limit]:
            a, b = int(zh[i]), int(zh[i + 1])
            if ends[i] < b:
                bad(f"zone {z}: pages {int(ends[i])}..{b - 1} belong to no block "
                    f"(after the order-{int(order[a])} block at pfn {a})")
            else:
                bad(f"zone {z}: the order-{int(order[a])} {STATE_NAMES[int(state[a])]} block at "
                    f"pfn {a} overlaps the {STATE_NAMES[int(state[b])]} block at pfn {b}")
        if ends[-1] != end:
            bad(f"zone {z}: the last block (pfn {int(zh[-1])}, order {int(order[zh[-1]])}) "
                f"ends at {int(ends[-1])}, the zone at {end}")

    # -- free lists -----------------------------------------------------------
    on_list = np.zeros(lay.nr_pages, dtype=np.int8)
    for z in range(lay.nr_zones):
        zb = lay.zone(z)
        start, end = machine.zone_range(z)
        for o in range(lay.max_order):
            for mt in range(MIGRATE_TYPES):
                slot = o * MIGRATE_TYPES + mt
                name = f"zone {z} free_area[{o}][{MIGRATETYPE_NAMES[mt]}]"
                count = int(zs[zb + Z_NR_FREE + slot])
                head = int(zs[zb + Z_FREE_HEAD + slot])
                tail = int(zs[zb + Z_FREE_TAIL + slot])
                pfns, complete = walk(f, head, count + 1)
                if not complete or len(pfns) != count:
                    bad(f"{name}: nr_free is {count} but the list has "
                        f"{'more than ' + str(count) if not complete else len(pfns)} entries")
                prev = -1
                in_reported_run = False
                for p in pfns:
                    if not start <= p < end:
                        bad(f"{name}: pfn {p} is outside the zone ({start}..{end - 1})")
                        break
                    if reported_run:                    # Reported blocks only at the tail
                        is_rep = bool(f["flags"][p] & PG_REPORTED)
                        if in_reported_run and not is_rep:
                            bad(f"{name}: unreported pfn {p} behind the Reported run")
                        in_reported_run |= is_rep
                    if int(f["prev"][p]) != prev:
                        bad(f"{name}: pfn {p}.prev is {int(f['prev'][p])}, expected {prev}")
                    if on_list[p]:
                        bad(f"{name}: pfn {p} is on more than one list (or twice on this one)")
                        break
                    on_list[p] = 1
                    if state[p] != PS_BUDDY:
                        bad(f"{name}: pfn {p} is listed but its state is "
                            f"{STATE_NAMES.get(int(state[p]), state[p])}, not buddy")
                    if order[p] != o:
                        bad(f"{name}: pfn {p} has order {int(order[p])}")
                    if p & ((1 << o) - 1):
                        bad(f"{name}: pfn {p} is not aligned to order {o}")
                    pmt = int(pb_mt[p >> lay.pageblock_order])
                    if pmt != mt:
                        bad(f"{name}: pfn {p} is in a {MIGRATETYPE_NAMES[pmt]} pageblock")
                    prev = p
                if complete and (pfns[-1] if pfns else -1) != tail:
                    bad(f"{name}: tail is {tail}, the last entry is {pfns[-1] if pfns else -1}")
    for p in np.flatnonzero((state == PS_BUDDY) & (on_list == 0))[:limit]:
        bad(f"pfn {p}: free (buddy) head of order {int(order[p])} is on no free list")

    # -- nothing left unmerged ----------------------------------------------------
    buddy_heads = np.flatnonzero(state == PS_BUDDY)
    bo = order[buddy_heads].astype(np.int64)
    can = bo < lay.max_order - 1
    bh, bo = buddy_heads[can], bo[can]
    bud = bh ^ np.left_shift(np.int64(1), bo)
    inside = bud < lay.nr_pages
    bh, bo, bud = bh[inside], bo[inside], bud[inside]
    mergeable = (state[bud] == PS_BUDDY) & (order[bud] == bo) & (bh < bud)
    iso_p = pb_mt[bh >> lay.pageblock_order] == MIGRATE_ISOLATE
    iso_b = pb_mt[bud >> lay.pageblock_order] == MIGRATE_ISOLATE
    mergeable &= ~iso_p & ~iso_b
    for p, b, o in zip(bh[mergeable][:limit], bud[mergeable], bo[mergeable]):
        bad(f"pfn {p} and its buddy {b} are both free order-{o} blocks: they should have merged")

    # -- pcp lists --------------------------------------------------------------
    on_pcp = np.zeros(lay.nr_pages, dtype=np.int8)
    for a in range(n_agents):
        for z in range(lay.nr_zones):
            pb = lay.pcp(a, z)
            count = int(zs[pb + PCP_COUNT])
            pfns, complete = walk(f, int(zs[pb + PCP_HEAD]), count + 1)
            name = f"pcp list of agent {a} zone {z}"
            if not complete or len(pfns) != count:
                bad(f"{name}: count is {count} but the list has "
                    f"{'more than ' + str(count) if not complete else len(pfns)} entries")
            start, end = machine.zone_range(z)
            prev = -1
            for p in pfns:
                if not start <= p < end:
                    bad(f"{name}: pfn {p} is outside the zone")
                    break
                if on_pcp[p] or on_list[p]:
                    bad(f"{name}: pfn {p} is on more than one list")
                    break
                on_pcp[p] = 1
                if state[p] != PS_PCP or order[p] != 0 or int(f["owner"][p]) != a:
                    bad(f"{name}: pfn {p} is {STATE_NAMES.get(int(state[p]), state[p])} "
                        f"order {int(order[p])} owner {int(f['owner'][p])}")
                if int(f["prev"][p]) != prev:
                    bad(f"{name}: pfn {p}.prev is {int(f['prev'][p])}, expected {prev}")
                prev = p
            if complete and (pfns[-1] if pfns else -1) != int(zs[pb + PCP_TAIL]):
                bad(f"{name}: tail pointer does not match the last entry")
    for p in np.flatnonzero((state == PS_PCP) & (on_pcp == 0))[:limit]:
        bad(f"pfn {p}: pcp page of agent {int(f['owner'][p])} is on no pcp list")

    # -- allocated blocks and their holders --------------------------------------------
    alloc = np.flatnonzero(state == PS_ALLOC)
    owners = f["owner"][alloc].astype(np.int64)
    for p in alloc[(owners < 0) | (owners >= n_agents)][:limit]:
        bad(f"pfn {p}: allocated block has no valid owner ({int(f['owner'][p])})")
    if held is not None:
        holder: dict[int, int] = {}
        for a, blocks in held.items():
            for p, o in blocks:
                p, o = int(p), int(o)
                if p in holder:
                    bad(f"pfn {p}: double allocation: held by agent {holder[p]} and agent {a}")
                    continue
                holder[p] = a
                if not 0 <= p < lay.nr_pages or state[p] != PS_ALLOC:
                    st = STATE_NAMES.get(int(state[p]), state[p]) if 0 <= p < lay.nr_pages else "?"
                    bad(f"pfn {p}: agent {a} holds it but it is {st}, not allocated")
                elif int(f["owner"][p]) != a or int(order[p]) != o:
                    bad(f"pfn {p}: agent {a} holds it as order {o}; the page says owner "
                        f"{int(f['owner'][p])} order {int(order[p])}")
        for p in alloc:
            if int(p) not in holder:
                bad(f"pfn {p}: allocated to agent {int(f['owner'][p])}, who does not hold it")

    inflight = np.flatnonzero(state == PS_INFLIGHT)
    if len(inflight) and not allow_inflight:
        bad(f"{len(inflight)} blocks are still in a reporting batch (first pfn {inflight[0]}, "
            f"agent {int(f['owner'][inflight[0]])}) on a quiescent machine")

    # -- PageReported -------------------------------------------------------------
    rep = np.flatnonzero((f["flags"] & PG_REPORTED) != 0)
    for p in rep[(state[rep] != PS_BUDDY) | (order[rep] < report_order)][:limit]:
        bad(f"pfn {p}: PageReported on a {STATE_NAMES.get(int(state[p]), state[p])} "
            f"order-{int(order[p])} page (only free heads of order >= {report_order})")

    # -- design state the core keeps --------------------------------------------------
    if hook == HOOK_BOUNDARY:
        rep_heads = rep[(state[rep] == PS_BUDDY)]
        for z in range(lay.nr_zones):
            zb = lay.zone(z)
            start, end = machine.zone_range(z)
            in_zone = rep_heads[(rep_heads >= start) & (rep_heads < end)]
            for o in range(lay.max_order):
                want = int((order[in_zone] == o).sum())
                have = int(zs[zb + Z_REPORTED + o])
                if want != have:
                    bad(f"zone {z}: reported_pages[{o}] is {have} but {want} order-{o} free "
                        "blocks are Reported")
            if not allow_inflight and zs[zb + Z_REPORT_FLAGS] & ZRF_ACTIVE:
                bad(f"zone {z}: boundaries still active on a quiescent machine")
    if hook == HOOK_HOSTSCAN and len(hidx) and size.sum() == lay.nr_pages:
        # a host-reclaimed frame is wholly free: the guest allocated nothing
        # in it without an install
        covering = np.repeat(state[hidx], size)
        ro = int(zs[H_REPORT_ORDER])
        words = int(zs[H_BITMAP_WORDS])
        ok = (PS_BUDDY, PS_INFLIGHT) if allow_inflight else (PS_BUDDY,)
        for z in range(lay.nr_zones):
            start, end = machine.zone_range(z)
            base = lay.off_strat + z * words
            bits = np.unpackbits(zs[base: base + words].view(np.uint8), bitorder="little")
            for frame in np.flatnonzero(bits[:(end - start) >> ro])[:limit]:
                p = start + (int(frame) << ro)
                pages = covering[p: p + (1 << ro)]
                if not np.isin(pages, ok).all():
                    bad(f"zone {z}: frame at pfn {p} is marked host-reclaimed but holds "
                        f"{STATE_NAMES.get(int(pages[~np.isin(pages, ok)][0]), '?')} pages")
    if hook == HOOK_BITMAP:
        words = int(zs[H_BITMAP_WORDS])
        for z in range(lay.nr_zones):
            base = lay.off_strat + z * words
            bits = int(np.unpackbits(zs[base: base + words].view(np.uint8)).sum())
            have = int(zs[lay.zone(z) + Z_BITMAP_COUNT])
            if bits != have:
                bad(f"zone {z}: the bitmap has {bits} bits set but its count says {have}")

    # -- the host's pages (shmalloc.hostpage) ------------------------------------------
    if lay.host_page_order:
        uad = sum(int(zs[lay.wstats(a) + WC_USE_AFTER_DISCARD]) for a in range(n_agents))
        for msg in unbacked_but_resident(machine)[:limit]:
            if uad == 0 or "never touched" in msg:
                bad(msg)

    # -- zone locks --------------------------------------------------------------------
    if check_locks:
        for z, value in enumerate(machine.semaphore_values()):
            if value != 1:
                bad(f"zone {z}: lock semaphore value is {value}, expected 1 (free)")
            pid = int(zs[lay.zone(z) + Z_LOCK_PID])
            if pid != 0:
                bad(f"zone {z}: lock owner recorded as pid {pid} on a quiescent machine")

    for extra in extra_checks:
        for msg in extra(machine):
            bad(msg)
    return bad.result()


"""A slow, obviously correct page allocator and reporting core in plain Python.

The model the compiled engine is tested against (tests/test_model.py feeds
both the same random operation sequences, one agent per step, and compares
their whole state after every step), and the baseline ``shmalloc bench``
compares the engine's speed with.  It follows the same rules as the engine,
written the simplest way: Python lists whose index 0 is the list head, a dict
of block heads, sets for page flags and frame bits, no shared memory, no
locks (a lock acquisition is only counted, per zone and caller class and per
agent, as lock_stat and the workers' own counters count them).

The allocator (mm/page_alloc.c in miniature, as the engine implements it):

* allocation takes the head of the smallest non-empty MOVABLE list of
  sufficient order and returns upper halves to the heads of the lower lists;
* a freed block merges with its buddy ``pfn ^ (1 << order)`` while the buddy
  is a free head of the same order (and, at or above pageblock order, in a
  pageblock of the same migratetype), then goes to the head of the list of
  its pageblock's migratetype, or to the tail when the caller asks
  (FPI_TO_TAIL) or when 5.7's ``buddy_merge_likely`` holds: its order is
  below MAX_ORDER - 2 and the buddy of the block one order up (``(pfn &
  ~(1 << order)) ^ (2 << order)``) is a free head of that order;
* order-0 pages go through per-(agent, zone) pcp lists when ``pcp_batch`` > 0:
  allocation pops the head, refilling ``pcp_batch`` pages at the tail when
  empty; a free pushes the head and, at ``pcp_high`` pages, returns
  ``pcp_batch`` pages from the tail to the buddy lists; a drain request
  posted for an agent is served the next time it enters its pcp path;
* an agent tries zone ``agent % zones`` first, then the next ones in order;
* a block leaving a free list (allocation, split, merge, isolation, a
  reporting batch) loses PageReported.

The reporting core and the designs' compiled steps (one method per kernel a
reporter or the hypervisor stub calls, named after it):

* the free-path hooks, after a free (not a put-back) merged into a block of
  at least the report order: mainline's IDLE -> REQUESTED edge (a wake-up
  only on that edge); Duyck's zone request once ``nr_free[order] >=
  reported[order] + 32`` (a wake-up when the request count leaves 0);
  Nitesh's bitmap bit for the block's frame, counted, and a wake-up at
  ``capacity`` set bits when no pass is queued;
* Duyck's bookkeeping: per-(zone, order) Reported counts, and while a zone's
  cycle is active a boundary per list (the first block of the Reported run
  at its tail): removing the Reported block at the boundary moves the
  boundary to the next block, and a tail insertion lands just in front of
  the boundary;
* hostscan's marks, one per report-order frame: an allocation touching a
  marked frame clears the mark and counts an install;
* taking free blocks into a batch (PS_INFLIGHT, owned by the taker) and
  ``__isolate_free_page``, which refuses a block that would leave the zone's
  MOVABLE free pages below its min watermark; putting a batch back merges as
  a free does, at the tail only when asked, without calling the hook;
* Wang v14's free page virtqueue: the callback walk puts each block on a
  ring as it reaches it, counted as reported, and wakes the host when it
  waits for a kick; a full ring drops the block; the host takes everything
  added since it last took;
* the isolation of whole free blocks: per pageblock, refused if it is
  isolated already or, on the block's first pageblock, if the block is no
  longer a free block of that order; the block moves to the ISOLATE list.
  Undoing it goes pageblock by pageblock, the last first: each is restored
  to MOVABLE, and at the block's head the block goes back through the free
  path, merging, unless its buddy is isolated too: then it only moves to
  the MOVABLE list (``move_freepages_block``).
"""

from __future__ import annotations

from collections import Counter

from .config import (
    FREE_PAGE_VQ_SIZE,
    PAGE_REPORTING_CAPACITY,
    PAGE_REPORTING_HWM,
    PAGEBLOCK_ORDER,
)
from .layout import (
    CALLER_ALLOC,
    CALLER_FREE,
    CALLER_HOST,
    CALLER_REPORTER,
    E_BAD_ORDER,
    E_BAD_PFN,
    E_DOUBLE_FREE,
    E_NOMEM,
    E_NOT_ALLOCATED,
    E_NOT_OWNER,
    E_WRONG_ORDER,
    HOOK_BITMAP,
    HOOK_BOUNDARY,
    HOOK_HOSTSCAN,
    HOOK_MAINLINE,
    HOOK_NONE,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    MIGRATE_TYPES,
    PS_ALLOC,
    PS_BUDDY,
    PS_INFLIGHT,
    PS_PCP,
    REPORTING_ACTIVE,
    REPORTING_IDLE,
    REPORTING_REQUESTED,
)

#: what a step of mainline's ``page_reporting_cycle`` ended with
STEP_DONE, STEP_FULL, STEP_STOP = 0, 1, 2

#: the reporting statistics the reference keeps (names of layout.REPORT_FIELDS)
REFERENCE_STATS = ("state", "requests", "refcnt", "installs", "pages_not_taken",
                   "reported_skipped", "budget_exhausted", "pcp_drains", "reports",
                   "ranges_reported", "pages_reported", "vq_full")


class ReferenceError(AssertionError):
    """The engine was asked for something the reference cannot do: a step
    outside its contract (a block that is not on the list it should be on)."""


def _unlist(lst: list, pfn: int, what: str) -> None:
    if pfn not in lst:
        raise ReferenceError(f"pfn {pfn} is not on {what}")
    lst.remove(pfn)


class ReferenceAllocator:
    def __init__(self, nr_pages: int, zones: int, max_order: int, nr_agents: int,
                 pcp_batch: int, pcp_high: int, *, hook: int = HOOK_NONE,
                 report_order: int = PAGEBLOCK_ORDER, capacity: int = PAGE_REPORTING_CAPACITY,
                 wmark_min: int | list[int] = 0, pageblock_order: int = PAGEBLOCK_ORDER,
                 vq_size: int = FREE_PAGE_VQ_SIZE):
        self.nr_pages = nr_pages
        self.nr_zones = zones
        self.zone_pages = nr_pages // zones
        self.max_order = max_order
        self.pcp_batch = pcp_batch
        self.pcp_high = pcp_high
        self.hook = hook
        self.report_order = report_order
        self.capacity = capacity
        self.pageblock_order = pageblock_order
        self.wmark_min = (list(wmark_min) if isinstance(wmark_min, (list, tuple))
                          else [wmark_min] * zones)
        # free_area[zone][order][mt] -> list of pfns, head first
        self.free_area = [[[[] for _ in range(MIGRATE_TYPES)] for _ in range(max_order)]
                          for _ in range(zones)]
        self.pcp = {(a, z): [] for a in range(nr_agents) for z in range(zones)}
        # every block head: pfn -> [state, order, owner]
        self.heads: dict[int, list] = {}
        self.pageblock_mt = [MIGRATE_MOVABLE] * (nr_pages >> pageblock_order)
        self.reported: set[int] = set()          # PG_REPORTED
        self.gen: Counter = Counter()            # pfn -> times handed out as a block head
        self.drain_req = [0] * nr_agents         # pcp drain requests posted, per agent
        self.drain_done = [0] * nr_agents        # ... and served
        self.locks: Counter = Counter()          # (zone, caller) -> acquisitions
        self.agent_locks: Counter = Counter()    # agent -> acquisitions
        self.stats: Counter = Counter()          # REFERENCE_STATS
        self.stats["state"] = REPORTING_IDLE
        # Duyck v9
        self.zone_requested = [False] * zones
        self.zone_active = [False] * zones
        self.reported_count = [[0] * max_order for _ in range(zones)]
        self.boundary: dict[tuple[int, int, int], int] = {}    # (zone, order, mt); absent: -1
        # Wang v14's free page virtqueue: every entry ever added, the host's
        # used index, whether the host waits for a kick, the kicks that woke it
        self.vq_size = vq_size
        self.vq: list[tuple[int, int]] = []
        self.vq_used = 0
        self.vq_notify = False
        self.vq_posts = 0
        # a bit per report-order frame: Nitesh's bitmap, hostscan's marks
        self.marked: set[int] = set()
        self.bitmap_count = [0] * zones
        top = max_order - 1
        for pfn in range(0, nr_pages, 1 << top):
            self.free_area[self.zone_of(pfn)][top][MIGRATE_MOVABLE].append(pfn)
            self.heads[pfn] = [PS_BUDDY, top, -1]

    def start_reported(self) -> None:
        """``--start reported`` (:func:`shmalloc.machine._start_reported`):
        the free memory is already reported, as after the reporter's initial
        flush.  Every free block of at least the report order is Reported
        (mainline, boundary: counted per order), or its frames are marked
        host-reclaimed (hostscan)."""
        for zone in range(self.nr_zones):
            for order in range(self.report_order, self.max_order):
                for mt in range(MIGRATE_TYPES):
                    for pfn in self.free_area[zone][order][mt]:
                        if self.hook in (HOOK_MAINLINE, HOOK_BOUNDARY):
                            self.reported.add(pfn)
                        if self.hook == HOOK_BOUNDARY:
                            self.reported_count[zone][order] += 1
                        if self.hook == HOOK_HOSTSCAN:
                            self.marked.update(self.frames_of(pfn, order))

    # -- geometry ------------------------------------------------------------
    def zone_of(self, pfn: int) -> int:
        return pfn // self.zone_pages

    def zonelist(self, agent: int) -> list[int]:
        return [(agent + i) % self.nr_zones for i in range(self.nr_zones)]

    def migratetype(self, pfn: int) -> int:
        return self.pageblock_mt[pfn >> self.pageblock_order]

    def frames_of(self, pfn: int, order: int) -> range:
        """The report-order frames the block at ``pfn`` touches."""
        size = 1 << self.report_order
        return range(pfn - pfn % size, pfn + (1 << order), size)

    def head(self, pfn: int) -> tuple:
        """(state, order) of the block headed at ``pfn``, or (None, None)."""
        return tuple(self.heads.get(pfn, (None, None))[:2])

    def lock(self, agent: int, zone: int, caller: int) -> None:
        self.locks[(zone, caller)] += 1
        self.agent_locks[agent] += 1

    # -- the one place a block enters or leaves a free list ---------------------
    def del_page_from_free_list(self, zone: int, pfn: int, order: int, mt: int) -> None:
        lst = self.free_area[zone][order][mt]
        if pfn in self.reported:
            self.reported.remove(pfn)
            if self.hook == HOOK_BOUNDARY:
                key = (zone, order, mt)
                if self.zone_active[zone] and self.boundary.get(key, -1) == pfn:
                    i = lst.index(pfn)
                    self.boundary[key] = lst[i + 1] if i + 1 < len(lst) else -1
                self.reported_count[zone][order] -= 1
        _unlist(lst, pfn, f"zone {zone} free_area[{order}][{mt}]")
        del self.heads[pfn]

    def add_to_free_list(self, zone: int, pfn: int, order: int, mt: int, tail: bool) -> None:
        lst = self.free_area[zone][order][mt]
        self.heads[pfn] = [PS_BUDDY, order, -1]
        before = -1
        if (tail and self.hook == HOOK_BOUNDARY and order >= self.report_order
                and self.zone_active[zone]):
            before = self.boundary.get((zone, order, mt), -1)
        if before >= 0:
            if before not in lst:
                raise ReferenceError(f"zone {zone} order {order} mt {mt}: the boundary "
                                     f"{before} is not on its list")
            lst.insert(lst.index(before), pfn)
        elif tail:
            lst.append(pfn)
        else:
            lst.insert(0, pfn)

    def rotate_to_front(self, zone: int, order: int, mt: int, pfn: int) -> None:
        """``list_rotate_to_front``: ``pfn`` first, the blocks before it, in
        order, to the tail; -1 leaves the list as it is."""
        if pfn < 0:
            return
        lst = self.free_area[zone][order][mt]
        i = lst.index(pfn)
        lst[:] = lst[i:] + lst[:i]

    def zone_free_pages(self, zone: int) -> int:
        """NR_FREE_PAGES: pages on the zone's MOVABLE free lists."""
        return sum(len(self.free_area[zone][o][MIGRATE_MOVABLE]) << o
                   for o in range(self.max_order))

    # -- buddy -----------------------------------------------------------------
    def rmqueue_smallest(self, zone: int, order: int) -> int:
        for cur in range(order, self.max_order):
            lst = self.free_area[zone][cur][MIGRATE_MOVABLE]
            if lst:
                pfn = lst[0]
                self.del_page_from_free_list(zone, pfn, cur, MIGRATE_MOVABLE)
                while cur > order:
                    cur -= 1
                    self.add_to_free_list(zone, pfn + (1 << cur), cur, MIGRATE_MOVABLE, False)
                if self.hook == HOOK_HOSTSCAN:
                    self.hostscan_install(pfn, order)
                return pfn
        return -1

    def free_one_page(self, agent: int, zone: int, pfn: int, order: int, mt: int, tail: bool,
                      notify: bool) -> tuple[int, int]:
        """Merge, insert, and with ``notify`` call the design's hook.  The
        block at ``pfn`` is in no list and is no head when called."""
        while order < self.max_order - 1:
            buddy = pfn ^ (1 << order)
            if self.head(buddy) != (PS_BUDDY, order):
                break
            if order >= self.pageblock_order and self.migratetype(buddy) != mt:
                break
            self.del_page_from_free_list(zone, buddy, order, self.migratetype(buddy))
            pfn = min(pfn, buddy)
            order += 1
        if not tail:
            tail = self.merge_likely(pfn, order)
        self.add_to_free_list(zone, pfn, order, mt, tail)
        if notify:
            self.notify_free(agent, zone, pfn, order)
        return pfn, order

    def merge_likely(self, pfn: int, order: int) -> bool:
        if order >= self.max_order - 2:
            return False
        parent_buddy = (pfn & ~(1 << order)) ^ (1 << (order + 1))
        return self.head(parent_buddy) == (PS_BUDDY, order + 1)

    def prep_new_page(self, pfn: int, order: int, agent: int) -> None:
        self.heads[pfn] = [PS_ALLOC, order, agent]
        self.gen[pfn] += 1

    # -- the free-path hooks ------------------------------------------------------
    def wake(self) -> None:
        self.stats["requests"] += 1

    def page_reporting_request(self) -> None:
        """mainline: REQUESTED; a wake-up only on the IDLE -> REQUESTED edge."""
        was = self.stats["state"]
        self.stats["state"] = REPORTING_REQUESTED
        if was == REPORTING_IDLE:
            self.wake()

    def notify_free(self, agent: int, zone: int, pfn: int, order: int) -> None:
        if order < self.report_order:
            return
        if self.hook == HOOK_MAINLINE:
            self.page_reporting_request()
        elif self.hook == HOOK_BOUNDARY:
            if self.zone_requested[zone]:
                return
            nr_free = sum(len(self.free_area[zone][order][mt]) for mt in range(MIGRATE_TYPES))
            if nr_free < self.reported_count[zone][order] + PAGE_REPORTING_HWM:
                return
            self.zone_requested[zone] = True
            self.stats["refcnt"] += 1
            if self.stats["refcnt"] == 1:
                self.wake()
        elif self.hook == HOOK_BITMAP:
            frame = pfn - pfn % (1 << self.report_order)
            if frame not in self.marked:
                self.marked.add(frame)
                self.bitmap_count[zone] += 1
            if self.bitmap_count[zone] >= self.capacity and self.stats["refcnt"] == 0:
                self.stats["refcnt"] = 1
                self.wake()

    def hostscan_install(self, pfn: int, order: int) -> None:
        for frame in self.frames_of(pfn, order):
            if frame in self.marked:
                self.marked.remove(frame)
                self.stats["installs"] += 1

    # -- pcp -----------------------------------------------------------------
    def service_drain(self, agent: int) -> None:
        if self.drain_req[agent] != self.drain_done[agent]:
            self.drain(agent, agent)
            self.drain_done[agent] = self.drain_req[agent]

    def post_drain(self, target: int) -> None:
        """Another process asks ``target`` to drain its pcp lists."""
        self.drain_req[target] += 1

    def _pcp_alloc(self, agent: int) -> int:
        self.service_drain(agent)
        for zone in self.zonelist(agent):
            lst = self.pcp[(agent, zone)]
            if not lst:
                self.lock(agent, zone, CALLER_ALLOC)
                for _ in range(self.pcp_batch):
                    pfn = self.rmqueue_smallest(zone, 0)
                    if pfn < 0:
                        break
                    lst.append(pfn)
                    self.heads[pfn] = [PS_PCP, 0, agent]
            if lst:
                pfn = lst.pop(0)
                self.prep_new_page(pfn, 0, agent)
                return pfn
        return E_NOMEM

    def _free_pcppages_bulk(self, agent: int, target: int, zone: int, count: int) -> int:
        self.lock(agent, zone, CALLER_FREE)
        lst = self.pcp[(target, zone)]
        count = min(count, len(lst))
        for _ in range(count):
            pfn = lst.pop()
            del self.heads[pfn]
            self.free_one_page(agent, zone, pfn, 0, self.migratetype(pfn), False, True)
        return count

    def drain(self, target: int, agent: int | None = None) -> int:
        """``drain_pages``: empty ``target``'s pcp lists (``agent`` takes the
        locks; ``target`` itself by default).  Returns the pages drained."""
        agent = target if agent is None else agent
        total = 0
        for zone in range(self.nr_zones):
            if self.pcp[(target, zone)]:
                total += self._free_pcppages_bulk(agent, target, zone,
                                                  len(self.pcp[(target, zone)]))
        return total

    # -- API -------------------------------------------------------------------
    def alloc(self, agent: int, order: int) -> int:
        if not 0 <= order < self.max_order:
            return E_BAD_ORDER
        if order == 0 and self.pcp_batch > 0:
            return self._pcp_alloc(agent)
        for zone in self.zonelist(agent):
            self.lock(agent, zone, CALLER_ALLOC)
            pfn = self.rmqueue_smallest(zone, order)
            if pfn >= 0:
                self.prep_new_page(pfn, order, agent)
                return pfn
        return E_NOMEM

    def _check_free(self, agent: int, pfn: int, order: int) -> int:
        state, h_order, owner = self.heads.get(pfn, [None, None, None])
        if state == PS_ALLOC:
            if h_order != order:
                return E_WRONG_ORDER
            if owner != agent:
                return E_NOT_OWNER
            return 0
        return E_NOT_ALLOCATED if state is None else E_DOUBLE_FREE

    def free(self, agent: int, pfn: int, order: int) -> int:
        if not 0 <= order < self.max_order:
            return E_BAD_ORDER
        if not 0 <= pfn < self.nr_pages or pfn % (1 << order):
            return E_BAD_PFN
        if order == 0 and self.pcp_batch > 0:
            err = self._check_free(agent, pfn, 0)
            if err == 0:
                self.service_drain(agent)
                zone = self.zone_of(pfn)
                lst = self.pcp[(agent, zone)]
                lst.insert(0, pfn)
                self.heads[pfn] = [PS_PCP, 0, agent]
                if len(lst) >= self.pcp_high:
                    self._free_pcppages_bulk(agent, agent, zone, self.pcp_batch)
            return err
        zone = self.zone_of(pfn)
        self.lock(agent, zone, CALLER_FREE)
        err = self._check_free(agent, pfn, order)
        if err == 0:
            del self.heads[pfn]
            self.free_one_page(agent, zone, pfn, order, self.migratetype(pfn), False, True)
        return err

    def allocated(self) -> dict[int, tuple[int, int]]:
        """pfn -> (order, owner) of every allocated block."""
        return {p: (o, w) for p, (s, o, w) in self.heads.items() if s == PS_ALLOC}

    def inflight(self) -> dict[int, tuple[int, int]]:
        """pfn -> (order, owner) of every block in a reporting batch."""
        return {p: (o, w) for p, (s, o, w) in self.heads.items() if s == PS_INFLIGHT}

    # -- batches: take, isolate, put back --------------------------------------------
    def take_free_page(self, agent: int, zone: int, pfn: int, order: int, mt: int) -> None:
        self.del_page_from_free_list(zone, pfn, order, mt)
        self.heads[pfn] = [PS_INFLIGHT, order, agent]

    def isolate_free_page(self, agent: int, zone: int, pfn: int, order: int, mt: int) -> bool:
        """``__isolate_free_page``: refused if the zone's MOVABLE free pages
        would fall below its min watermark."""
        if mt != MIGRATE_ISOLATE and \
                self.zone_free_pages(zone) - (1 << order) < self.wmark_min[zone]:
            return False
        self.take_free_page(agent, zone, pfn, order, mt)
        return True

    def putback_isolated_page(self, agent: int, zone: int, pfn: int, order: int, mt: int,
                              to_tail: bool) -> bool:
        """Back to the free lists, merging, no hook; True if it did not merge."""
        del self.heads[pfn]
        self.free_one_page(agent, zone, pfn, order, mt, to_tail, False)
        return self.head(pfn) == (PS_BUDDY, order)

    # -- mainline (reporter/mainline.py) -------------------------------------------------
    def page_reporting_begin_pass(self) -> None:
        self.stats["state"] = REPORTING_ACTIVE

    def page_reporting_end_pass(self) -> bool:
        """ACTIVE -> IDLE; True (and unchanged) if it was REQUESTED."""
        if self.stats["state"] == REPORTING_ACTIVE:
            self.stats["state"] = REPORTING_IDLE
            return False
        return self.stats["state"] == REPORTING_REQUESTED

    def page_reporting_drain(self, agent: int, batch: list, reported: bool,
                             to_tail: bool) -> None:
        for pfn, order in batch:
            if self.putback_isolated_page(agent, self.zone_of(pfn), pfn, order,
                                          self.migratetype(pfn), to_tail) and reported:
                self.reported.add(pfn)

    def reporting_cycle_step(self, agent: int, zone: int, order: int, mt: int, batch: list,
                             drain_n: int, reported: bool, budget: int,
                             to_tail: bool) -> tuple[int, int]:
        """One hold: drain the batch's first ``drain_n`` blocks (then it is
        empty), then walk the list from its head, skipping Reported blocks,
        taking the others until the batch is full, the budget is spent or
        the watermark refuses; rotate the list to the first block not taken.
        ``batch`` is a list of (pfn, order), changed in place."""
        self.lock(agent, zone, CALLER_REPORTER)
        if drain_n > 0:
            self.page_reporting_drain(agent, batch[:drain_n], reported, to_tail)
            batch.clear()
        status, stop = STEP_DONE, -1
        if drain_n > 0 and not reported:
            status = STEP_STOP
        else:
            for pfn in list(self.free_area[zone][order][mt]):
                if pfn in self.reported:
                    self.stats["reported_skipped"] += 1
                    continue
                if budget < 0:
                    self.stats["state"] = REPORTING_REQUESTED
                    self.stats["budget_exhausted"] += 1
                    status, stop = STEP_STOP, pfn
                    break
                if len(batch) == self.capacity:
                    status, stop = STEP_FULL, pfn
                    break
                if not self.isolate_free_page(agent, zone, pfn, order, mt):
                    self.stats["pages_not_taken"] += 1 << order
                    status, stop = STEP_STOP, pfn
                    break
                batch.append((pfn, order))
        self.rotate_to_front(zone, order, mt, stop)
        return status, len(batch)

    def drain_batch(self, agent: int, zone: int, batch: list, reported: bool,
                    to_tail: bool) -> None:
        self.lock(agent, zone, CALLER_REPORTER)
        self.page_reporting_drain(agent, batch, reported, to_tail)
        batch.clear()

    # -- boundary (reporter/boundary.py) ---------------------------------------------------
    def boundary_request_all(self, agent: int) -> None:
        for zone in range(self.nr_zones):
            self.lock(agent, zone, CALLER_REPORTER)
            if not self.zone_requested[zone]:
                self.zone_requested[zone] = True
                self.stats["refcnt"] += 1
                if self.stats["refcnt"] == 1:
                    self.wake()

    def get_unreported_page(self, agent: int, zone: int, order: int, mt: int) -> int:
        """The unreported block in front of the boundary (the list's tail
        when there is none), else the head; -1 if the head is Reported too
        (then the boundary moves to the head)."""
        key = (zone, order, mt)
        lst = self.free_area[zone][order][mt]
        b = self.boundary.get(key, -1)
        if b < 0:
            pfn = lst[-1] if lst else -1
        else:
            if b not in lst:
                raise ReferenceError(f"zone {zone} order {order}: the boundary {b} is not on "
                                     "its list")
            i = lst.index(b)
            pfn = lst[i - 1] if i > 0 else -1
        if pfn < 0:
            return -1
        if pfn in self.reported:
            pfn = lst[0]
            if pfn in self.reported:
                self.boundary[key] = pfn
                return -1
        self.take_free_page(agent, zone, pfn, order, mt)
        return pfn

    def put_reported_page(self, agent: int, zone: int, pfn: int, order: int,
                          reported: bool) -> None:
        mt = self.migratetype(pfn)
        del self.heads[pfn]
        self.free_one_page(agent, zone, pfn, order, mt, True, False)
        if reported and self.head(pfn) == (PS_BUDDY, order):
            self.reported_count[zone][order] += 1
            self.boundary[(zone, order, mt)] = pfn
            self.reported.add(pfn)

    def boundary_cycle_step(self, agent: int, zone: int, batch: list, n: int,
                            reported: bool) -> int:
        """One hold: ``n == -1`` starts the cycle (boundaries reset, active),
        else the ``n`` blocks of ``batch`` go back; then, while the zone is
        requested, fill ``batch`` from the highest order down.  A fill that
        comes up short ends the request; an empty batch ends the cycle."""
        self.lock(agent, zone, CALLER_REPORTER)
        if n < 0:
            for order in range(self.report_order, self.max_order):
                for mt in range(MIGRATE_TYPES):
                    self.boundary[(zone, order, mt)] = -1
            self.zone_active[zone] = True
        back = batch[:max(n, 0)]
        batch.clear()
        for pfn, order in back:
            self.put_reported_page(agent, zone, pfn, order, reported)
        if n < 0 or self.zone_requested[zone]:
            self.boundary_fill(agent, zone, batch)
        if not batch:
            self.zone_active[zone] = False
        return len(batch)

    def boundary_fill(self, agent: int, zone: int, batch: list) -> None:
        for order in range(self.max_order - 1, self.report_order - 1, -1):
            for mt in range(MIGRATE_TYPES):
                if mt == MIGRATE_ISOLATE:
                    continue
                while (pfn := self.get_unreported_page(agent, zone, order, mt)) >= 0:
                    batch.append((pfn, order))
                    if len(batch) == self.capacity:
                        return
        self.zone_requested[zone] = False
        self.stats["refcnt"] -= 1

    # -- callback and isolate (reporter/callback.py, reporter/isolate.py) -------------------
    def walk_free_mem_block(self, agent: int, zone: int, order: int, mt: int, room: int,
                            record: bool, send: bool = False) -> tuple[list[int], int]:
        """The list's blocks, head first: (recorded pfns, blocks visited);
        with ``record`` the walk stops when ``room`` pfns are recorded; with
        ``send`` each block goes on the free page virtqueue."""
        self.lock(agent, zone, CALLER_REPORTER)
        lst = self.free_area[zone][order][mt]
        if record:
            return list(lst[:room]), min(len(lst), room)
        if send:
            for pfn in lst:
                self.free_page_vq_add(pfn, order)
        return [], len(lst)

    def free_page_vq_add(self, pfn: int, order: int) -> None:
        """A block on the ring, counted as reported; a kick wakes a waiting
        host; a full ring drops the block."""
        if len(self.vq) - self.vq_used >= self.vq_size:
            self.stats["vq_full"] += 1
            return
        self.vq.append((pfn, order))
        self.stats["reports"] += 1
        self.stats["ranges_reported"] += 1
        self.stats["pages_reported"] += 1 << order
        if self.vq_notify:
            self.vq_notify = False
            self.vq_posts += 1

    def free_page_vq_wait(self) -> int:
        """The host waits for a kick: how many entries are there already."""
        self.vq_notify = True
        return len(self.vq) - self.vq_used

    def free_page_vq_take(self) -> list[tuple[int, int]]:
        """The host takes every entry added since it last took."""
        out = self.vq[self.vq_used:]
        self.vq_used = len(self.vq)
        self.vq_notify = False
        return out

    def set_migratetype_isolate(self, zone: int, pfn: int, order: int, pageblock: int) -> bool:
        if self.migratetype(pageblock) == MIGRATE_ISOLATE:
            return False
        if pageblock == pfn:
            if self.head(pfn) != (PS_BUDDY, order):
                return False
            self.del_page_from_free_list(zone, pfn, order, self.migratetype(pfn))
            self.pageblock_mt[pageblock >> self.pageblock_order] = MIGRATE_ISOLATE
            self.add_to_free_list(zone, pfn, order, MIGRATE_ISOLATE, False)
        else:
            self.pageblock_mt[pageblock >> self.pageblock_order] = MIGRATE_ISOLATE
        return True

    def start_isolate_page_range(self, agent: int, zone: int, pfn: int, order: int) -> bool:
        """Isolate the free block pageblock by pageblock, one hold and one
        ``drain_all_pages`` each; the first refusal ends it."""
        for pageblock in range(pfn, pfn + (1 << order), 1 << self.pageblock_order):
            self.lock(agent, zone, CALLER_REPORTER)
            if not self.set_migratetype_isolate(zone, pfn, order, pageblock):
                return False
            self.stats["pcp_drains"] += 1
        return True

    def unset_migratetype_isolate(self, agent: int, zone: int, pageblock: int,
                                  to_tail: bool) -> None:
        """One isolated pageblock back to MOVABLE: a free block of at least
        pageblock order headed here goes back through the free path (merging)
        unless its buddy is isolated too; else the free blocks headed in the
        pageblock move to the MOVABLE list, unmerged."""
        pbo = self.pageblock_order
        if self.migratetype(pageblock) != MIGRATE_ISOLATE:
            return
        state, order = self.head(pageblock)
        if state == PS_BUDDY and order >= pbo and (
                order >= self.max_order - 1
                or self.migratetype(pageblock ^ (1 << order)) != MIGRATE_ISOLATE):
            self.del_page_from_free_list(zone, pageblock, order, MIGRATE_ISOLATE)
            self.pageblock_mt[pageblock >> pbo] = MIGRATE_MOVABLE
            self.free_one_page(agent, zone, pageblock, order, MIGRATE_MOVABLE, to_tail, False)
            return
        for pfn in range(pageblock, pageblock + (1 << pbo)):
            state, order = self.head(pfn)
            if state == PS_BUDDY:
                self.del_page_from_free_list(zone, pfn, order, MIGRATE_ISOLATE)
                self.add_to_free_list(zone, pfn, order, MIGRATE_MOVABLE, to_tail)
        self.pageblock_mt[pageblock >> pbo] = MIGRATE_MOVABLE

    def undo_isolate_page_range(self, agent: int, zone: int, pfn: int, order: int,
                                to_tail: bool) -> None:
        """The block's isolated pageblocks, last first, a lock hold each."""
        step = 1 << self.pageblock_order
        for pageblock in range(pfn + (1 << order) - step, pfn - 1, -step):
            if self.migratetype(pageblock) == MIGRATE_ISOLATE:
                self.lock(agent, zone, CALLER_REPORTER)
                self.unset_migratetype_isolate(agent, zone, pageblock, to_tail)

    # -- bitmap (reporter/bitmap.py) --------------------------------------------------------
    def bitmap_scan(self, agent: int, zone: int, batch: list, index: int) -> tuple[int, int]:
        """From bit ``index`` on, a hold per set bit: take the block if it is
        still a free MOVABLE block of at least the report order (and the
        watermark allows), clear the bit; stop with a full batch.  Returns
        (blocks taken, next index or -1 at the end of the zone)."""
        start = zone * self.zone_pages
        nbits = self.zone_pages >> self.report_order
        batch.clear()
        while index < nbits and len(batch) < self.capacity:
            frame = start + (index << self.report_order)
            if frame in self.marked:
                self.lock(agent, zone, CALLER_REPORTER)
                state, order = self.head(frame)
                if (state == PS_BUDDY and order >= self.report_order
                        and self.migratetype(frame) == MIGRATE_MOVABLE):
                    if self.isolate_free_page(agent, zone, frame, order, MIGRATE_MOVABLE):
                        batch.append((frame, order))
                    else:
                        self.stats["pages_not_taken"] += 1 << order
                self.marked.remove(frame)
                self.bitmap_count[zone] -= 1
            index += 1
        return len(batch), (index if index < nbits else -1)

    def bitmap_return(self, agent: int, zone: int, batch: list) -> None:
        self.lock(agent, zone, CALLER_REPORTER)
        for pfn, order in batch:
            del self.heads[pfn]
            self.free_one_page(agent, zone, pfn, order, self.migratetype(pfn), False, False)
        batch.clear()

    def bitmap_pass_done(self) -> None:
        self.stats["refcnt"] = 0

    # -- hostscan (hypervisor_stub/hostscan.py) ----------------------------------------------
    def host_reclaimed(self, pfn: int, order: int) -> bool:
        return all(frame in self.marked for frame in self.frames_of(pfn, order))

    def host_scan_take(self, agent: int, zone: int, order: int, batch: list,
                       budget: int) -> tuple[int, int]:
        """One hold on the MOVABLE list: visit at most ``budget`` blocks from
        the head, take the unmarked ones up to a full batch, rotate the list
        to the first block not visited.  Returns (taken, visited)."""
        self.lock(agent, zone, CALLER_HOST)
        batch.clear()
        visited, stop = 0, -1
        for pfn in list(self.free_area[zone][order][MIGRATE_MOVABLE]):
            if len(batch) >= self.capacity or visited >= budget:
                stop = pfn
                break
            visited += 1
            if not self.host_reclaimed(pfn, order):
                self.take_free_page(agent, zone, pfn, order, MIGRATE_MOVABLE)
                batch.append((pfn, order))
        self.rotate_to_front(zone, order, MIGRATE_MOVABLE, stop)
        return len(batch), visited

    def host_scan_mark(self, agent: int, zone: int, batch: list, marks: list) -> None:
        """Mark the frames the host discarded (``marks``), put every block of
        the batch back at the tail."""
        self.lock(agent, zone, CALLER_HOST)
        self.marked.update(marks)
        for pfn, order in batch:
            del self.heads[pfn]
            self.free_one_page(agent, zone, pfn, order, self.migratetype(pfn), True, False)
        batch.clear()

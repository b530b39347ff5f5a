"""A slow, obviously correct page allocator in plain Python.

The model the compiled engine is tested against (tests/test_model.py feeds
both the same random operation sequences and compares every free list, pcp
list and allocated block after every step), and the baseline ``shmalloc
bench`` compares the engine's speed with.  It follows the same rules as the
engine, written the simplest way: Python lists whose index 0 is the list head,
a dict of block heads, no shared memory, no locks.

Rules (mm/page_alloc.c in miniature, as the engine implements them):

* allocation takes the head of the smallest non-empty list of sufficient
  order and returns upper halves to the heads of the lower lists;
* a freed block merges with its buddy ``pfn ^ (1 << order)`` while the buddy
  is a free head of the same order (and, at or above pageblock order, of the
  same migratetype), then goes to the head of its list, or to the tail when
  5.7's ``buddy_merge_likely`` holds: its order is below MAX_ORDER - 2 and
  the buddy of the block one order up (``(pfn & ~(1 << order)) ^ (2 <<
  order)``) is a free head of that order;
* order-0 pages go through per-(agent, zone) pcp lists when ``pcp_batch`` > 0:
  allocation pops the head, refilling ``pcp_batch`` pages at the tail when
  empty; a free pushes the head and, at ``pcp_high`` pages, returns
  ``pcp_batch`` pages from the tail to the buddy lists;
* an agent tries zone ``agent % zones`` first, then the next ones in order.
"""

from __future__ import annotations

from .layout import (
    E_BAD_ORDER,
    E_BAD_PFN,
    E_DOUBLE_FREE,
    E_NOMEM,
    E_NOT_ALLOCATED,
    E_NOT_OWNER,
    E_WRONG_ORDER,
    MIGRATE_MOVABLE,
    MIGRATE_TYPES,
    PS_ALLOC,
    PS_BUDDY,
    PS_PCP,
)


class ReferenceAllocator:
    def __init__(self, nr_pages: int, zones: int, max_order: int, nr_agents: int,
                 pcp_batch: int, pcp_high: int):
        self.nr_pages = nr_pages
        self.nr_zones = zones
        self.zone_pages = nr_pages // zones
        self.max_order = max_order
        self.pcp_batch = pcp_batch
        self.pcp_high = pcp_high
        # free_area[zone][order][mt] -> list of pfns, head first
        self.free_area = [[[[] for _ in range(MIGRATE_TYPES)] for _ in range(max_order)]
                          for _ in range(zones)]
        self.pcp = {(a, z): [] for a in range(nr_agents) for z in range(zones)}
        # every block head: pfn -> [state, order, owner]
        self.heads: dict[int, list] = {}
        top = max_order - 1
        for pfn in range(0, nr_pages, 1 << top):
            self.free_area[self.zone_of(pfn)][top][MIGRATE_MOVABLE].append(pfn)
            self.heads[pfn] = [PS_BUDDY, top, -1]

    def zone_of(self, pfn: int) -> int:
        return pfn // self.zone_pages

    def zonelist(self, agent: int) -> list[int]:
        return [(agent + i) % self.nr_zones for i in range(self.nr_zones)]

    # -- buddy ---------------------------------------------------------------
    def _take(self, zone: int, order: int) -> int:
        for cur in range(order, self.max_order):
            lst = self.free_area[zone][cur][MIGRATE_MOVABLE]
            if lst:
                pfn = lst.pop(0)
                del self.heads[pfn]
                while cur > order:
                    cur -= 1
                    half = pfn + (1 << cur)
                    self.free_area[zone][cur][MIGRATE_MOVABLE].insert(0, half)
                    self.heads[half] = [PS_BUDDY, cur, -1]
                return pfn
        return -1

    def _put(self, pfn: int, order: int) -> None:
        zone = self.zone_of(pfn)
        while order < self.max_order - 1:
            buddy = pfn ^ (1 << order)
            if self.heads.get(buddy, [None, None])[:2] != [PS_BUDDY, order]:
                break
            self.free_area[zone][order][MIGRATE_MOVABLE].remove(buddy)
            del self.heads[buddy]
            pfn = min(pfn, buddy)
            order += 1
        lst = self.free_area[zone][order][MIGRATE_MOVABLE]
        if self._merge_likely(pfn, order):
            lst.append(pfn)
        else:
            lst.insert(0, pfn)
        self.heads[pfn] = [PS_BUDDY, order, -1]

    def _merge_likely(self, pfn: int, order: int) -> bool:
        if order >= self.max_order - 2:
            return False
        parent_buddy = (pfn & ~(1 << order)) ^ (1 << (order + 1))
        return self.heads.get(parent_buddy, [None, None])[:2] == [PS_BUDDY, order + 1]

    # -- pcp -----------------------------------------------------------------
    def _pcp_alloc(self, agent: int) -> int:
        for zone in self.zonelist(agent):
            lst = self.pcp[(agent, zone)]
            if not lst:
                for _ in range(self.pcp_batch):
                    pfn = self._take(zone, 0)
                    if pfn < 0:
                        break
                    lst.append(pfn)
                    self.heads[pfn] = [PS_PCP, 0, agent]
            if lst:
                pfn = lst.pop(0)
                self.heads[pfn] = [PS_ALLOC, 0, agent]
                return pfn
        return E_NOMEM

    def _drain(self, target: int, zone: int, count: int) -> None:
        lst = self.pcp[(target, zone)]
        for _ in range(min(count, len(lst))):
            pfn = lst.pop()
            del self.heads[pfn]
            self._put(pfn, 0)

    def drain(self, target: int) -> None:
        for zone in range(self.nr_zones):
            self._drain(target, zone, len(self.pcp[(target, zone)]))

    # -- API -------------------------------------------------------------------
    def alloc(self, agent: int, order: int) -> int:
        if not 0 <= order < self.max_order:
            return E_BAD_ORDER
        if order == 0 and self.pcp_batch > 0:
            return self._pcp_alloc(agent)
        for zone in self.zonelist(agent):
            pfn = self._take(zone, order)
            if pfn >= 0:
                self.heads[pfn] = [PS_ALLOC, order, agent]
                return pfn
        return E_NOMEM

    def free(self, agent: int, pfn: int, order: int) -> int:
        if not 0 <= order < self.max_order:
            return E_BAD_ORDER
        if not 0 <= pfn < self.nr_pages or pfn % (1 << order):
            return E_BAD_PFN
        state, h_order, owner = self.heads.get(pfn, [None, None, None])
        if state == PS_ALLOC:
            if h_order != order:
                return E_WRONG_ORDER
            if owner != agent:
                return E_NOT_OWNER
        elif state is not None:
            return E_DOUBLE_FREE
        else:
            return E_NOT_ALLOCATED
        del self.heads[pfn]
        if order == 0 and self.pcp_batch > 0:
            zone = self.zone_of(pfn)
            self.pcp[(agent, zone)].insert(0, pfn)
            self.heads[pfn] = [PS_PCP, 0, agent]
            if len(self.pcp[(agent, zone)]) >= self.pcp_high:
                self._drain(agent, zone, self.pcp_batch)
        else:
            self._put(pfn, order)
        return 0

    def allocated(self) -> dict[int, tuple[int, int]]:
        """pfn -> (order, owner) of every allocated block."""
        return {p: (o, w) for p, (s, o, w) in self.heads.items() if s == PS_ALLOC}

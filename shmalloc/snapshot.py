"""Read a machine's state from Python: lists, blocks, where every page is.

Plain Python over the shared arrays, for the invariant checker, the tests and
the end-of-run accounting.  Nothing here takes a zone lock: call it on a
quiescent machine (or accept a torn view).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .layout import (
    AG_ROLE,
    MIGRATE_ISOLATE,
    MIGRATE_TYPES,
    MIGRATETYPE_NAMES,
    PCP_HEAD,
    PS_ALLOC,
    PS_BUDDY,
    PS_INFLIGHT,
    PS_NONE,
    PS_PCP,
    ROLE_NAMES,
    Z_FREE_HEAD,
    Z_NR_FREE,
)


def walk(frames: np.ndarray, head: int, limit: int) -> tuple[list[int], bool]:
    """Follow ``next`` from ``head``; stops after ``limit`` entries.
    Returns (pfns, complete) where complete is False if the walk was cut."""
    out = []
    pfn = head
    while pfn >= 0:
        if len(out) >= limit or pfn >= len(frames):
            return out, False
        out.append(int(pfn))
        pfn = int(frames[pfn]["next"])
    return out, True


def free_list(machine, zone: int, order: int, mt: int) -> list[int]:
    zb = machine.layout.zone(zone)
    head = int(machine.zs[zb + Z_FREE_HEAD + order * MIGRATE_TYPES + mt])
    return walk(machine.frames, head, machine.nr_pages)[0]


def nr_free(machine, zone: int, order: int, mt: int) -> int:
    zb = machine.layout.zone(zone)
    return int(machine.zs[zb + Z_NR_FREE + order * MIGRATE_TYPES + mt])


def pcp_list(machine, agent: int, zone: int) -> list[int]:
    head = int(machine.zs[machine.layout.pcp(agent, zone) + PCP_HEAD])
    return walk(machine.frames, head, machine.nr_pages)[0]


def free_areas(machine) -> dict:
    """{(zone, order, mt): [pfn, ...]} for every non-empty free list."""
    out = {}
    for z in range(machine.nr_zones):
        for o in range(machine.max_order):
            for mt in range(MIGRATE_TYPES):
                lst = free_list(machine, z, o, mt)
                if lst:
                    out[(z, o, mt)] = lst
    return out


def pcp_lists(machine) -> dict:
    out = {}
    for a in range(machine.layout.nr_agents):
        for z in range(machine.nr_zones):
            lst = pcp_list(machine, a, z)
            if lst:
                out[(a, z)] = lst
    return out


def heads(machine) -> np.ndarray:
    """pfns of every block head (state != PS_NONE), ascending."""
    return np.flatnonzero(machine.frames["state"] != PS_NONE)


def allocated_blocks(machine) -> dict[int, tuple[int, int]]:
    """pfn -> (order, owner) of every allocated block."""
    f = machine.frames
    idx = np.flatnonzero(f["state"] == PS_ALLOC)
    return {int(p): (int(f["order"][p]), int(f["owner"][p])) for p in idx}


def free_pages(machine, zone: int | None = None, include_isolated: bool = False) -> int:
    """NR_FREE_PAGES: pages in free blocks on the buddy lists."""
    total = 0
    zones = range(machine.nr_zones) if zone is None else [zone]
    for z in zones:
        for o in range(machine.max_order):
            for mt in range(MIGRATE_TYPES):
                if mt == MIGRATE_ISOLATE and not include_isolated:
                    continue
                total += nr_free(machine, z, o, mt) << o
    return total


def page_accounting(machine) -> list[tuple[str, int]]:
    """Where every page is, by place, from the block heads: free (buddy lists,
    by migratetype), pcp lists, allocated blocks and in-flight batches, by
    agent.  The rows add up to the machine's pages when nothing is lost; the
    last row counts pages in no block at all (should be 0)."""
    f = machine.frames
    idx = heads(machine)
    state = f["state"][idx]
    size = np.left_shift(1, f["order"][idx].astype(np.int64).clip(0))
    owner = f["owner"][idx]
    rows: Counter = Counter()
    roles = {a: ROLE_NAMES[int(machine.zs[machine.layout.agent(a) + AG_ROLE])]
             for a in range(machine.layout.nr_agents)}
    pb_mt = machine.zs[machine.layout.off_pageblock:
                       machine.layout.off_pageblock + machine.layout.nr_pageblocks]
    pb_order = machine.layout.pageblock_order
    for p, s, n, w in zip(idx, state, size, owner):
        if s == PS_BUDDY:
            mt = MIGRATETYPE_NAMES[int(pb_mt[int(p) >> pb_order])]
            rows[f"free ({mt.lower()})"] += int(n)
        elif s == PS_PCP:
            rows[f"pcp of agent {int(w)} ({roles.get(int(w), '?')})"] += int(n)
        elif s == PS_ALLOC:
            rows[f"allocated to agent {int(w)} ({roles.get(int(w), '?')})"] += int(n)
        elif s == PS_INFLIGHT:
            rows[f"in-flight batch of agent {int(w)} ({roles.get(int(w), '?')})"] += int(n)
        else:
            rows[f"bad state {int(s)}"] += int(n)
    covered = int(size.sum())
    out = sorted(rows.items())
    out.append(("unaccounted", machine.nr_pages - covered))
    return out

"""The invariant checker catches what it should.

Each test corrupts one thing the way a bug would and expects the specific
violation; a clean machine must check clean.  Marked ``nojit`` (the checker
calls compiled helpers through the Python API).
"""

from __future__ import annotations

import pytest

from shmalloc import invariants
from shmalloc.freelist import add_to_free_list
from shmalloc.isolation import set_migratetype_isolate, unset_migratetype_isolate
from shmalloc.layout import MIGRATE_MOVABLE, PCP_COUNT, PG_REPORTED, PS_ALLOC, Z_LOCK_PID, Z_NR_FREE

pytestmark = pytest.mark.nojit


def one(violations: list[str], *fragments: str) -> str:
    """Exactly the expected kind of violation is reported."""
    hits = [v for v in violations if all(f in v for f in fragments)]
    assert hits, f"expected a violation with {fragments}, got {violations}"
    return hits[0]


@pytest.fixture
def m(make_machine):
    mach = make_machine(memory=16 << 20, zones=2, pcp_batch=0)
    assert invariants.check(mach) == []
    return mach


def test_clean_machine_with_allocations(m):
    held = {m.control_agent: [(m.alloc(o), o) for o in (0, 0, 3, 9, 10)]}
    assert invariants.check(m, held=held) == []


def test_broken_next_pointer(m):
    blocks = [m.alloc(0) for _ in range(6)]
    for p in blocks[::2]:
        m.free(p, 0)                      # three unmergeable order-0 free pages
    head = blocks[4]
    m.frames[head]["next"] = blocks[2] + 1   # points into an allocated page
    one(invariants.check(m), "free_area[0]")


def test_wrong_nr_free(m):
    zb = m.layout.zone(0)
    m.zs[zb + Z_NR_FREE + 10 * 2 + MIGRATE_MOVABLE] += 1
    one(invariants.check(m), "zone 0 free_area[10][Movable]", "nr_free is 3 but the list has 2")


def test_unmerged_buddies(m):
    a, b = m.alloc(0), m.alloc(0)
    assert a ^ 1 == b
    # put both back by hand, bypassing __free_one_page's merge
    for p in (a, b):
        m.frames[p]["state"] = 0
        add_to_free_list(m.frames, m.zs, 0, p, 0, MIGRATE_MOVABLE, False)
    one(invariants.check(m), f"pfn {a} and its buddy {b}", "should have merged")


def test_isolated_buddies_may_stand_apart(m):
    """Isolation moves a free block to the ISOLATE list without merging it
    (5.7's move_freepages_block): two isolated buddies are not a violation,
    an isolated and a movable one cannot merge, two movable ones must."""
    a, b = m.alloc(9), m.alloc(9)
    assert a ^ 512 == b
    zone = a // (m.nr_pages // m.nr_zones)
    m.free(a, 9)
    assert set_migratetype_isolate(m.frames, m.zs, zone, a, 9, a)
    m.free(b, 9)                          # cannot merge with the isolated block
    assert m.frames[b]["order"] == 9
    assert invariants.check(m) == []
    assert set_migratetype_isolate(m.frames, m.zs, zone, b, 9, b)
    assert invariants.check(m) == []      # both isolated, apart
    unset_migratetype_isolate(m.frames, m.zs, m.control_agent, zone, a, False)
    assert m.frames[a]["order"] == 9      # its buddy isolated: moved, not merged
    assert invariants.check(m) == []      # movable beside isolated
    unset_migratetype_isolate(m.frames, m.zs, m.control_agent, zone, b, False)
    assert m.frames[min(a, b)]["order"] == 10       # merged on the way back
    assert invariants.check(m) == []


def test_foreign_owner(m):
    p = m.alloc(2)
    m.frames[p]["owner"] = 0
    one(invariants.check(m, held={m.control_agent: [(p, 2)]}),
        f"pfn {p}: agent {m.control_agent} holds it", "the page says owner 0")


def test_double_allocation_between_holders(m):
    p = m.alloc(0)
    one(invariants.check(m, held={m.control_agent: [(p, 0)], 0: [(p, 0)]}),
        f"pfn {p}: double allocation")


def test_allocated_block_nobody_holds(m):
    p = m.alloc(1)
    one(invariants.check(m, held={m.control_agent: []}), f"pfn {p}: allocated to agent")


def test_stale_state_on_a_tail_page(m):
    p = m.alloc(1)
    m.frames[p + 1]["state"] = PS_ALLOC
    m.frames[p + 1]["order"] = 0
    one(invariants.check(m), f"block at pfn {p} overlaps")


def test_pages_in_no_block(m):
    p = m.alloc(2)
    m.frames[p]["order"] = 1                # the head now covers half its block
    one(invariants.check(m), f"pages {p + 2}..{p + 3} belong to no block")


def test_misaligned_head(m):
    p = m.alloc(2)
    m.frames[p]["state"] = 0
    m.frames[p + 1]["state"] = PS_ALLOC
    m.frames[p + 1]["order"] = 2
    one(invariants.check(m), f"pfn {p + 1}: order-2 block head is not aligned")


def test_reported_flag_on_allocated_page(m):
    p = m.alloc(9)
    m.frames[p]["flags"] |= PG_REPORTED
    one(invariants.check(m), f"pfn {p}: PageReported on a allocated order-9 page")


def test_pcp_count_mismatch(make_machine):
    m = make_machine(pcp_batch=4, pcp_high=8)
    p = m.alloc(0)
    m.zs[m.layout.pcp(m.control_agent, 0) + PCP_COUNT] += 1
    one(invariants.check(m, held={m.control_agent: [(p, 0)]}),
        f"pcp list of agent {m.control_agent} zone 0: count is 4 but the list has 3")


def test_lock_left_held(m):
    m._sems[1].acquire()
    m.zs[m.layout.zone(1) + Z_LOCK_PID] = 4242
    v = invariants.check(m)
    one(v, "zone 1: lock semaphore value is 0")
    one(v, "zone 1: lock owner recorded as pid 4242")
    m._sems[1].release()

"""Duyck's boundary design (v9, September 2019): what it asks of the
allocator, step by step on a quiescent machine.

The Reported blocks of a free list form one run at its tail, behind a
per-(order, migratetype) boundary pointer that is live while a zone's
reporting cycle runs.  The allocator keeps it: pulling the Reported block at
the boundary moves the boundary on, a tail insertion lands in front of the
boundary, and the free path requests the zone once ``nr_free[order] >=
reported[order] + 32``.  The invariant checker's boundary branches are each
shown firing on a state corrupted the way a bug would.
"""

from __future__ import annotations

import pytest
from reporting_helpers import RecordingDevice, design

from reporter.boundary import boundary_cycle_step
from shmalloc import invariants, snapshot
from shmalloc.config import PAGE_REPORTING_HWM
from shmalloc.freelist import add_to_free_list
from shmalloc.layout import (
    HOOK_BOUNDARY,
    MIGRATE_MOVABLE,
    PG_REPORTED,
    RS_REQUESTS,
    Z_BOUNDARY,
    Z_REPORT_FLAGS,
    Z_REPORTED,
    ZRF_ACTIVE,
    ZRF_REQUESTED,
    free_list_slot,
)
from shmalloc.page_alloc import take_free_page

pytestmark = pytest.mark.nojit

TOP = 10                       # the largest order with the default MAX_ORDER 11


def boundary(m, order: int) -> int:
    return int(m.zs[m.layout.zone(0) + Z_BOUNDARY + free_list_slot(order, MIGRATE_MOVABLE)])


def reported_count(m, order: int) -> int:
    return int(m.zs[m.layout.zone(0) + Z_REPORTED + order])


def free_list(m, order: int) -> list[int]:
    return [int(p) for p in snapshot.free_areas(m).get((0, order, MIGRATE_MOVABLE), [])]


def is_reported(m, pfn: int) -> bool:
    return bool(m.frames[pfn]["flags"] & PG_REPORTED)


@pytest.fixture
def m(make_machine):
    """One zone of eight free order-10 blocks."""
    return make_machine(memory=32 << 20, zones=1, pcp_batch=0, strategy=HOOK_BOUNDARY)


@pytest.fixture
def mid_cycle(m):
    """A reporting cycle stopped while its second batch is with the host:
    the order-10 list is four unreported blocks, then the Reported run of the
    first batch (two blocks), the boundary on its first block."""
    d = design(m, "boundary", capacity=2)
    d.start()                                     # page_reporting_startup: zones requested
    args = (d.frames, d.zs, d.agent, 0, d.batch_pfn, d.batch_order)
    first = boundary_cycle_step(*args, -1, True)  # start: boundaries on, fill batch 1
    assert first == 2
    batch1 = [int(p) for p in d.batch_pfn[:2]]
    assert boundary_cycle_step(*args, 2, True) == 2   # batch 1 back Reported, batch 2 out
    lst = free_list(m, TOP)
    assert len(lst) == 4 + 2 and m.zs[m.layout.zone(0) + Z_REPORT_FLAGS] & ZRF_ACTIVE
    assert [is_reported(m, p) for p in lst] == [False] * 4 + [True] * 2
    assert sorted(lst[4:]) == sorted(batch1) and boundary(m, TOP) == lst[4]
    assert reported_count(m, TOP) == 2
    assert invariants.check(m, allow_inflight=True) == []

    def finish():
        n = 2
        while n:
            n = boundary_cycle_step(*args, n, True)
    return d, finish


def test_pulling_the_reported_block_at_the_boundary_moves_the_boundary(m, mid_cycle):
    _, finish = mid_cycle
    unreported, (r1, r2) = free_list(m, TOP)[:4], free_list(m, TOP)[4:]
    got = [m.alloc(TOP) for _ in range(4)]      # the allocator takes the list's head
    assert sorted(got) == sorted(unreported)
    assert boundary(m, TOP) == r1 and reported_count(m, TOP) == 2
    assert m.alloc(TOP) == r1                   # the Reported block at the boundary
    assert boundary(m, TOP) == r2               # the boundary moved onto the next one
    assert reported_count(m, TOP) == 1 and not is_reported(m, r1)
    assert m.alloc(TOP) == r2
    assert boundary(m, TOP) == -1 and reported_count(m, TOP) == 0   # the end of the list
    held = got + [r1, r2]
    assert invariants.check(m, held={m.control_agent: [(p, TOP) for p in held]},
                            allow_inflight=True) == []
    for p in held:
        m.free(p, TOP)
    finish()
    assert invariants.check(m) == []


def test_tail_insertion_lands_in_front_of_the_boundary(m, mid_cycle):
    _, finish = mid_cycle
    lst = free_list(m, TOP)
    moved = lst[0]
    take_free_page(m.frames, m.zs, m.control_agent, 0, moved, TOP, MIGRATE_MOVABLE)
    add_to_free_list(m.frames, m.zs, 0, moved, TOP, MIGRATE_MOVABLE, True)
    assert free_list(m, TOP) == lst[1:4] + [moved] + lst[4:]   # not behind the Reported run
    assert boundary(m, TOP) == lst[4] and reported_count(m, TOP) == 2
    assert invariants.check(m, allow_inflight=True) == []
    finish()
    assert invariants.check(m) == []


def test_request_fires_at_hwm_above_the_reported_count(make_machine):
    """The free path requests the zone when ``nr_free[9] >= reported[9] + 32``
    and not one free before; reported blocks raise the mark."""
    assert PAGE_REPORTING_HWM == 32                    # v9's PAGE_REPORTING_HWM
    m = make_machine(memory=256 << 20, zones=1, pcp_batch=0, strategy=HOOK_BOUNDARY)
    zb = m.layout.zone(0)
    blocks = [m.alloc(9) for _ in range(m.nr_pages >> 9)]     # every pageblock, split
    lone = [p for p in blocks if not p & 512]   # freed alone: their buddies stay allocated

    def requested() -> bool:
        return bool(m.zs[zb + Z_REPORT_FLAGS] & ZRF_REQUESTED)

    def free_until_requested(start: int) -> int:
        for i, p in enumerate(lone[start:], start):
            m.free(p, 9)
            if requested():
                return i + 1                  # order-9 blocks free now
        raise AssertionError("never requested")

    wakes = m.zs[m.layout.off_report + RS_REQUESTS]
    assert free_until_requested(0) == PAGE_REPORTING_HWM          # reported[9] is 0
    assert m.zs[m.layout.off_report + RS_REQUESTS] == wakes + 1    # the reporter was woken
    d = design(m, "boundary", device=RecordingDevice(), capacity=8)
    d.process()                               # reports the 32 blocks; the request ends
    assert reported_count(m, 9) == PAGE_REPORTING_HWM and not requested()
    assert free_until_requested(PAGE_REPORTING_HWM) == 2 * PAGE_REPORTING_HWM
    held = [p for p in blocks if p not in lone[:2 * PAGE_REPORTING_HWM]]
    assert invariants.check(m, held={m.control_agent: [(p, 9) for p in held]}) == []


def test_outside_a_cycle_a_tail_free_lands_behind_the_reported_blocks(make_machine):
    """v9's get_unreported_tail gives the list's own tail while the zone is
    not being reported: with a report order below MAX_ORDER - 2, a free that
    buddy_merge_likely sends to the tail lands behind the Reported blocks.
    That is a state v9 reaches, so the checker accepts it, and the next cycle
    finds the block by probing the tail and reports it."""
    m = make_machine(memory=16 << 20, zones=1, pcp_batch=0, strategy=HOOK_BOUNDARY,
                     report_order=4)
    got = [m.alloc(4) for _ in range(5)]
    assert got == [0, 16, 32, 48, 64]           # free: 80 (order 4), 96 (order 5), ...
    m.free(0, 4)
    m.free(16, 4)                               # merged: an order-5 block at 0
    d = design(m, "boundary", capacity=8, report_order=4)
    d.start()
    d.process()
    assert free_list(m, 4) == [80] and is_reported(m, 80) and is_reported(m, 0)
    m.free(32, 4)               # its buddy 48 is held, its parent's buddy (0, order 5) free
    assert free_list(m, 4) == [80, 32] and not is_reported(m, 32)
    held = {m.control_agent: [(48, 4), (64, 4)]}
    assert invariants.check(m, held=held) == []
    d.device.reports.clear()
    d.start()
    d.process()
    assert d.device.ranges() == [(32, 4)]
    assert is_reported(m, 32) and invariants.check(m, held=held) == []


# -- the checker's boundary branches ------------------------------------------

@pytest.fixture
def after_cycle(m):
    """A finished cycle: every order-10 block Reported, boundaries off."""
    d = design(m, "boundary", capacity=4)
    d.start()
    d.process()
    assert all(is_reported(m, p) for p in free_list(m, TOP))
    assert invariants.check(m) == []
    return m


def test_checker_unreported_block_behind_the_reported_run(after_cycle):
    m = after_cycle
    p = m.alloc(TOP)
    m.free(p, TOP)                            # unreported, at the head
    assert invariants.check(m) == []
    take_free_page(m.frames, m.zs, m.control_agent, 0, p, TOP, MIGRATE_MOVABLE)
    add_to_free_list(m.frames, m.zs, 0, p, TOP, MIGRATE_MOVABLE, True)   # boundaries off: the end
    v = invariants.check(m)
    assert any(f"unreported pfn {p} behind the Reported run" in x for x in v), v


def test_checker_reported_count_off(after_cycle):
    m = after_cycle
    m.zs[m.layout.zone(0) + Z_REPORTED + TOP] += 1
    v = invariants.check(m)
    assert any(f"reported_pages[{TOP}] is {len(free_list(m, TOP)) + 1} but "
               f"{len(free_list(m, TOP))} order-{TOP} free blocks are Reported" in x
               for x in v), v


def test_checker_reported_flag_without_the_count(after_cycle):
    m = after_cycle
    p = free_list(m, TOP)[0]
    m.frames["flags"][p] &= 0xFF ^ PG_REPORTED   # Reported cleared behind the count's back
    v = invariants.check(m)
    assert any(f"reported_pages[{TOP}] is" in x for x in v), v


def test_checker_boundaries_left_active(after_cycle):
    m = after_cycle
    m.zs[m.layout.zone(0) + Z_REPORT_FLAGS] |= ZRF_ACTIVE
    v = invariants.check(m)
    assert any("zone 0: boundaries still active on a quiescent machine" in x for x in v), v
    assert invariants.check(m, allow_inflight=True) == []     # mid-cycle, that is expected

"""The mainline (Linux 5.7) design, step by step on a quiescent machine."""

from __future__ import annotations

import pytest
from reporting_helpers import RecordingDevice, design, free_blocks_at_least, reported

from shmalloc import invariants
from shmalloc.layout import (
    HOOK_MAINLINE,
    PG_REPORTED,
    REPORTING_IDLE,
    REPORTING_REQUESTED,
    RS_BUDGET_EXHAUSTED,
    RS_STATE,
)

pytestmark = pytest.mark.nojit


@pytest.fixture
def m(make_machine):
    return make_machine(memory=64 << 20, zones=2, pcp_batch=0, strategy=HOOK_MAINLINE)


def fragment(m):
    """Allocate a mix, free some: free blocks of many orders in both zones."""
    held = [m.alloc(0) for _ in range(300)] + [m.alloc(9) for _ in range(3)] + [m.alloc(4)]
    for p in held[:300:3]:
        m.free(p, 0)
    return held


def test_pass_reports_exactly_the_free_blocks_of_report_order(m):
    fragment(m)
    want = free_blocks_at_least(m, 9)
    d = design(m, "mainline")
    assert d.process() is False                 # nothing requested meanwhile
    assert d.device.ranges() == want
    assert all(len(r) <= 4 for r in d.device.reports)
    assert sorted(reported(m)) == [p for p, _ in want]
    assert invariants.check(m) == []
    d.device.reports.clear()
    d.process()                                 # a second pass: nothing new
    assert d.device.reports == []


def test_allocation_clears_reported(m):
    d = design(m, "mainline")
    d.process()
    marked = set(reported(m))
    assert marked
    p = m.alloc(9)                              # splits a reported order-10 block
    assert p in marked
    assert not m.frames[p]["flags"] & PG_REPORTED
    # the split half is a new free head: not reported (the kernel's expand too)
    assert not m.frames[p + 512]["flags"] & PG_REPORTED
    assert invariants.check(m, held={m.control_agent: [(p, 9)]}) == []


def test_merged_reported_buddies_are_reported_again(m):
    d = design(m, "mainline")
    a, b = m.alloc(9), m.alloc(9)              # the two halves of an order-10 block
    assert a ^ 512 == b
    m.free(a, 9)
    m.free(b, 9)                                # merge into one order-10 block
    d.process()
    m.alloc(10)                                 # other blocks get used...
    x, y = m.alloc(9), m.alloc(9)
    m.free(x, 9)
    d.process()                                 # x reported at order 9
    assert x in reported(m)
    d.device.reports.clear()
    m.free(y, 9)                                # merges with reported x
    head = min(x, y)
    assert m.frames[head]["order"] == 10
    assert not m.frames[head]["flags"] & PG_REPORTED
    d.process()
    assert (head, 10) in d.device.ranges()      # the merged block is reported again


def test_free_of_a_large_block_requests_reporting(m):
    d = design(m, "mainline")
    d.process()
    st = m.layout.off_report + RS_STATE
    assert m.zs[st] == REPORTING_IDLE
    a, b = m.alloc(3), m.alloc(3)              # buddies
    m.free(a, 3)                                # b holds it below the report order
    assert m.zs[st] == REPORTING_IDLE
    m.free(b, 3)                                # merges all the way up: a request
    assert m.zs[st] == REPORTING_REQUESTED
    assert m.wake.value == 1                    # the reporter was woken once


def test_budget_leaves_work_requested(make_machine):
    m = make_machine(memory=256 << 20, pcp_batch=0, strategy=HOOK_MAINLINE)
    d = design(m, "mainline", capacity=2)       # 64 blocks; budget ceil(64 / 32) = 2
    assert d.process() is True                  # out of budget: requested again
    assert m.zs[m.layout.off_report + RS_BUDGET_EXHAUSTED] == 1
    assert len(d.device.reports) == 3           # budget 2: reports while budget >= 0
    assert invariants.check(m) == []


def test_failed_report_marks_nothing(m):
    d = design(m, "mainline", device=RecordingDevice(status=-5))
    d.process()
    assert d.device.reports and reported(m) == []
    assert invariants.check(m) == []


def test_the_pages_in_a_batch_are_off_the_lists_during_the_report(m):
    """While a batch is with the hypervisor, its blocks are in no free list:
    the accounting finds them in-flight and the allocator cannot return them."""
    seen = {"inflight": [], "errors": [], "handed_out": []}

    def during_report():
        from shmalloc import snapshot
        rows = dict(snapshot.page_accounting(m))
        seen["inflight"].append(sum(v for k, v in rows.items() if k.startswith("in-flight")))
        seen["errors"] += invariants.check(m, allow_inflight=True, check_locks=False)
        p = m.try_alloc(10)
        if p in {q for q, _ in dev.reports[-1]}:
            seen["handed_out"].append(p)

    dev = RecordingDevice()
    dev.on_report = during_report
    design(m, "mainline", device=dev).process()
    assert len(seen["inflight"]) == len(dev.reports) > 1
    assert all(n > 0 for n in seen["inflight"])
    assert seen["errors"] == [] and seen["handed_out"] == []

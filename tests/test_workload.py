"""The workload kernels a worker process runs (shmalloc/workload.py), called
in this process: every written page carries its canary, a zeroed canary is a
use-after-discard, a foreign one a double allocation, a first write to a
page the host discarded a refault; the operation budget and the stop flag
end every workload.  Marked ``nojit``: tests/test_nojit.py runs them again as
plain Python."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hypervisor_stub.stub import Hypervisor, StubOptions
from shmalloc import invariants
from shmalloc.config import WORDS_PER_PAGE
from shmalloc.layout import H_STOP, WORKER_COUNTERS
from shmalloc.lock import now_ticks
from shmalloc.page_alloc import alloc_pages
from shmalloc.workload import (
    canary,
    free_blocks,
    free_user_block,
    hog_alloc,
    munmap_index,
    run_chunks,
    run_random,
    run_random_user,
    user_pages,
    write_block,
)

pytestmark = pytest.mark.nojit

AGENT = 0


def counters(m, agent: int = AGENT) -> dict[str, int]:
    base = m.layout.wstats(agent)
    return {name: int(m.zs[base + i]) for i, name in enumerate(WORKER_COUNTERS)}


def arrays(n: int):
    return np.zeros(n, np.int64), np.zeros(n, np.int64)


def ns_per_tick(m) -> float:
    return 1e9 / m.ticks_per_sec


def canaries_hold(m, pfns, orders, agent: int = AGENT) -> bool:
    """Every page of every block carries ``agent``'s canary of this allocation."""
    for p, o in zip(pfns, orders):
        gen = int(m.frames["gen"][p])
        for page in range(int(p), int(p) + (1 << int(o))):
            if int(m.mem[page * WORDS_PER_PAGE]) != canary(agent, gen, page):
                return False
    return True


@pytest.fixture
def m(make_machine):
    return make_machine(memory=16 << 20, pcp_batch=0)


@pytest.mark.parametrize("order", [0, 9], ids=["page_fault1", "thp"])
def test_chunk_rounds_write_canaries_free_and_stop_on_the_budget(m, order):
    chunk = 4 if order else 64
    pfn, orders = arrays(chunk)
    budget = 3 * 2 * chunk + 3                  # three rounds, then three allocations
    n = run_chunks(m.frames, m.zs, m.mem, AGENT, order, chunk, budget, ns_per_tick(m), pfn,
                   orders)
    c = counters(m)
    assert n == 3 and c["ops"] == budget and c["iterations"] == 3
    assert c["allocs"] == 3 * chunk + 3 and c["frees"] == 3 * chunk
    assert c["pages_allocated"] == (3 * chunk + 3) << order
    assert c["use_after_discard"] == c["foreign_canary"] == c["refaults"] == 0
    assert c["free_errors"] == 0 and c["alloc_failures"] == 0
    assert canaries_hold(m, pfn[:n], orders[:n])
    assert invariants.check(m, held={AGENT: list(zip(pfn[:n], orders[:n]))}) == []
    free_blocks(m.frames, m.zs, m.mem, AGENT, pfn, orders, n, ns_per_tick(m))
    assert counters(m)["frees"] == 3 * chunk + 3
    assert invariants.check(m, held={AGENT: []}) == []


def test_canary_check_counts_use_after_discard_and_a_foreign_owner(m):
    hv = Hypervisor(m, StubOptions(discard="punch"))
    pfn, orders = arrays(16)
    n = hog_alloc(m.frames, m.zs, m.mem, AGENT, 16, -1, ns_per_tick(m), pfn, orders)
    assert n == 16 and canaries_hold(m, pfn, orders)
    assert hv.discard(int(pfn[3]), 0) == 0         # the host takes a page its owner holds
    gen = int(m.frames["gen"][pfn[7]])
    m.mem[int(pfn[7]) * WORDS_PER_PAGE] = canary(AGENT + 1, gen, int(pfn[7]))   # another owner's
    free_blocks(m.frames, m.zs, m.mem, AGENT, pfn, orders, n, ns_per_tick(m))
    c = counters(m)
    assert c["use_after_discard"] == 1 and c["foreign_canary"] == 1
    assert c["frees"] == 16 and c["free_errors"] == 0
    assert invariants.check(m, held={AGENT: []}) == []


def test_first_write_to_a_discarded_page_is_a_refault(m):
    hv = Hypervisor(m, StubOptions(discard="punch"))
    pfn, orders = arrays(32)
    n = hog_alloc(m.frames, m.zs, m.mem, AGENT, 32, -1, ns_per_tick(m), pfn, orders)
    first = set(pfn[:n].tolist())
    free_blocks(m.frames, m.zs, m.mem, AGENT, pfn, orders, n, ns_per_tick(m))
    assert hv.discard(0, m.max_order - 1) == 0     # the host takes the free block back
    again, orders2 = arrays(64)
    n2 = hog_alloc(m.frames, m.zs, m.mem, AGENT, 64, -1, ns_per_tick(m), again, orders2)
    reused = first & set(again[:n2].tolist())
    assert reused                                  # the allocator hands the same pages out
    assert counters(m)["refaults"] == len(reused)  # written before, zero now: refaulted
    free_blocks(m.frames, m.zs, m.mem, AGENT, again, orders2, n2, ns_per_tick(m))
    assert counters(m)["use_after_discard"] == 0


def test_random_workload_is_seeded_keeps_its_target_and_stops_on_the_budget(make_machine):
    held = []
    for _ in range(2):
        m = make_machine(memory=16 << 20, pcp_batch=3, pcp_high=7)
        pfn, orders = arrays(2048)
        long_lived = np.zeros(2048, np.int64)
        n = run_random(m.frames, m.zs, m.mem, AGENT, 256, m.max_order, 3000, 7, ns_per_tick(m),
                       pfn, orders, long_lived, 0)
        c = counters(m)
        assert c["ops"] == 3000 and c["free_errors"] == 0 and c["use_after_discard"] == 0
        pages = int(np.sum(np.left_shift(1, orders[:n])))
        assert 0 < pages < 2 * 256 + 512           # around the target, below the free mark
        assert canaries_hold(m, pfn[:n], orders[:n])
        assert invariants.check(m, held={AGENT: list(zip(pfn[:n], orders[:n]))}) == []
        held.append(sorted(zip(pfn[:n].tolist(), orders[:n].tolist())))
    assert held[0] == held[1]                      # the same seed, the same blocks


def _user(m, target, budget, seed, pace=0, slots=None, schedule=(), deadline=0):
    """run_random_user on fresh arrays; returns (blocks, their pages as
    order-0 (pfn, order) arrays, the blocks' orders)."""
    slots = slots or target + 512
    head, order, long_lived = (np.zeros(target, np.int64) for _ in range(3))
    pfn, nxt, free_slots = (np.zeros(slots, np.int64) for _ in range(3))
    n = run_random_user(m.frames, m.zs, m.mem, AGENT, target, m.max_order, budget, seed,
                        ns_per_tick(m), head, order, long_lived, pfn, nxt, free_slots, deadline,
                        pace, np.array([int(t * m.ticks_per_sec) for t, _ in schedule], np.int64),
                        np.array([k for _, k in schedule], np.int64), now_ticks())
    out_pfn, out_order = arrays(slots)
    k = user_pages(head, n, pfn, nxt, out_pfn, out_order)
    return n, out_pfn[:k], out_order[:k], order[:n]


def test_user_mappings_are_order_0_pages_and_freed_page_by_page(make_machine):
    """--blocks user: the same draws as random, but a block of order n is 2^n
    order-0 allocations (a user program's mmap and its page faults): every
    call is for one page, the pages held are what the blocks' orders add up
    to, the same seed gives the same pages, and freeing them all leaves a
    consistent allocator."""
    held = []
    for _ in range(2):
        m = make_machine(memory=16 << 20, pcp_batch=3, pcp_high=7)
        n, pfn, orders, block_orders = _user(m, 256, 3000, 7)
        c = counters(m)
        # the budget ends the workload between mappings: a mapping begun is faulted in whole
        assert 3000 <= c["ops"] < 3000 + 512
        assert c["free_errors"] == 0 and c["use_after_discard"] == 0
        assert c["allocs"] == c["pages_allocated"]          # one page per call: order 0
        assert len(pfn) == int(np.sum(np.left_shift(1, block_orders)))
        assert block_orders.max() > 0                       # the orders were drawn
        assert not orders.any() and len(set(pfn.tolist())) == len(pfn)
        assert 0 < len(pfn) < 256 + 512
        assert canaries_hold(m, pfn, orders)
        assert invariants.check(m, held={AGENT: list(zip(pfn, orders))}) == []
        held.append(sorted(pfn.tolist()))
        free_blocks(m.frames, m.zs, m.mem, AGENT, pfn, orders, len(pfn), ns_per_tick(m))
        assert invariants.check(m, held={AGENT: []}) == []
    assert held[0] == held[1]


def test_user_mappings_pace_their_page_faults(m):
    """--page-rate: the k-th page fault comes no sooner than k paces after
    the start."""
    pace = m.ticks_per_sec // 20_000                        # 20,000 faults a second
    t0 = time.monotonic()
    _user(m, 64, 400, 1, pace=pace)
    took = time.monotonic() - t0
    faults = counters(m)["allocs"]
    assert faults >= 200 and took >= faults / 20_000 * 0.9


@pytest.mark.timeout(60)
def test_user_mappings_follow_a_schedule_of_page_faults(make_machine):
    """vm compare --model-rate timeline: the k-th page fault waits until the
    guest's schedule reaches k (linear between its points); a schedule that
    stays flat past the phase's deadline (phased's idle) does not hold the
    phase beyond it."""
    m = make_machine()
    t0 = time.monotonic()
    _user(m, 64, 300, 1, schedule=((0.0, 0), (0.2, 100)))
    took = time.monotonic() - t0
    assert counters(m)["allocs"] > 100 and took >= 0.2 * 0.9   # the 100th: no sooner than 0.2 s
    m = make_machine()
    t0 = time.monotonic()
    deadline = now_ticks() + int(0.2 * m.ticks_per_sec)
    _user(m, 1024, -1, 2, schedule=((0.0, 0), (0.01, 10), (50.0, 10), (51.0, 10 ** 9)),
          deadline=deadline)
    assert time.monotonic() - t0 < 25                  # ended at its deadline, not at 50 s
    assert 10 <= counters(m)["allocs"] <= 10 + 512      # the schedule's 10, the mapping begun


def test_munmap_frees_each_mmu_gather_batch_last_page_first(make_machine):
    """A munmap frees its pages batch by batch (8 on the stack, then 510 a
    page), each batch last page first (release_pages' list_add): the order
    of the frees, the pages user_pages hands the shrink, and the page a
    fault gets right after a munmap (the pcp list's head: the last freed)."""
    assert [munmap_index(i, 12) for i in range(12)] == [7, 6, 5, 4, 3, 2, 1, 0, 11, 10, 9, 8]
    assert [munmap_index(i, 3) for i in range(3)] == [2, 1, 0]
    order = [munmap_index(i, 520) for i in range(520)]
    assert order[:9] == [7, 6, 5, 4, 3, 2, 1, 0, 517] and order[-3:] == [8, 519, 518]
    assert sorted(order) == list(range(520))
    m = make_machine(pcp_batch=3, pcp_high=100)
    pfns = [alloc_pages(m.frames, m.zs, AGENT, 0) for _ in range(12)]
    pg_pfn = np.array(pfns, np.int64)
    pg_next = np.array(list(range(1, 12)) + [-1], np.int64)
    out_pfn, out_order = arrays(12)
    assert user_pages(np.array([0], np.int64), 1, pg_pfn, pg_next, out_pfn, out_order) == 12
    assert out_pfn.tolist() == [pfns[munmap_index(i, 12)] for i in range(12)]
    assert not out_order.any()
    ws = m.layout.wstats(AGENT)
    for p in pfns:                      # write them, as the workload's faults do
        write_block(m.frames, m.zs, m.mem, AGENT, p, 0, ws)
    top = free_user_block(m.frames, m.zs, m.mem, AGENT, 0, pg_pfn, pg_next,
                          np.zeros(12, np.int64), 0, ws, ns_per_tick(m))
    assert top == 12 and counters(m)["free_errors"] == 0
    assert alloc_pages(m.frames, m.zs, AGENT, 0) == pfns[8]      # the last one freed


def test_hog_allocates_until_memory_runs_out(m):
    pfn, orders = arrays(m.nr_pages + 1)
    n = hog_alloc(m.frames, m.zs, m.mem, AGENT, m.nr_pages + 1, -1, ns_per_tick(m), pfn, orders)
    c = counters(m)
    assert n == m.nr_pages and c["alloc_failures"] == 1 and c["ops"] == m.nr_pages + 1
    assert sorted(pfn[:n].tolist()) == list(range(m.nr_pages))
    free_blocks(m.frames, m.zs, m.mem, AGENT, pfn, orders, n, ns_per_tick(m))
    assert invariants.check(m, held={AGENT: []}) == []


def test_the_stop_flag_ends_every_workload(m):
    m.zs[H_STOP] = 1
    pfn, orders = arrays(64)
    assert run_chunks(m.frames, m.zs, m.mem, AGENT, 0, 64, -1, 1.0, pfn, orders) == 0
    assert run_random(m.frames, m.zs, m.mem, AGENT, 64, m.max_order, -1, 1, 1.0, pfn, orders,
                      np.zeros(64, np.int64), 0) == 0
    assert hog_alloc(m.frames, m.zs, m.mem, AGENT, 64, -1, 1.0, pfn, orders) == 0
    assert _user(m, 64, -1, 1)[0] == 0
    assert counters(m)["ops"] == 0


def test_first_writes_are_timed_one_block_in_64_and_one_in_8_after_a_refault(m):
    """write_block times a sample of first writes for what a refault costs
    in the run (launcher.comparison.cost): one block in 64, one in 8 right
    after a block that refaulted; a page written before counts as a refault
    or a resident write, a page never written as neither."""
    from shmalloc.workload import REFAULT_SAMPLE_EVERY, REFAULT_STREAK_EVERY
    hv = Hypervisor(m, StubOptions(discard="punch"))
    touched: set[int] = set()
    expect = {"sample_refaults": 0, "sample_resident": 0}
    count, streak = 0, False

    def write_pass(discard: bool) -> None:
        nonlocal count, streak
        pfn, orders = arrays(512)
        n = hog_alloc(m.frames, m.zs, m.mem, AGENT, 512, -1, ns_per_tick(m), pfn, orders)
        assert n == 512
        for p in pfn[:n].tolist():           # the rule, block by block (order 0: a page)
            count += 1
            every = REFAULT_STREAK_EVERY if streak else REFAULT_SAMPLE_EVERY
            refault = discard and p in touched
            if count % every == 0 and p in touched:
                expect["sample_refaults" if refault else "sample_resident"] += 1
            streak = refault
        touched.update(pfn[:n].tolist())
        free_blocks(m.frames, m.zs, m.mem, AGENT, pfn, orders, n, ns_per_tick(m))

    write_pass(discard=False)                      # never written before: neither kind
    c1 = counters(m)
    assert c1["sample_refaults"] == c1["sample_resident"] == c1["sample_dropped"] == 0
    for block in range(0, m.nr_pages, 1 << (m.max_order - 1)):
        assert hv.discard(block, m.max_order - 1) == 0      # the host takes it all
    sampled = expect["sample_refaults"]
    write_pass(discard=True)                       # refaults where written before
    c2 = counters(m)
    refaults_sampled = expect["sample_refaults"] - sampled
    write_pass(discard=False)                      # resident where written before
    c = counters(m)
    assert c["blocks_written"] == count == 3 * 512
    # every sampled write is counted as its kind, or dropped when it took
    # longer than a fault can (preempted: a busy machine); no timing is
    # assumed, so each kind's ticks are checked by where they go: the pass
    # that only refaults adds no resident ticks, the one that only writes
    # resident pages adds no refault ticks (swapping the two sums fails)
    assert c2["sample_refaults"] + c2["sample_dropped"] == refaults_sampled > 0
    assert c2["sample_resident"] == c2["sample_resident_ticks"] == 0
    assert (c["sample_resident"] + c["sample_dropped"] - c2["sample_dropped"]
            == expect["sample_resident"] > 0)
    assert (c["sample_refaults"], c["sample_refault_ticks"]) == (
        c2["sample_refaults"], c2["sample_refault_ticks"])
    assert c2["sample_refaults"] > 0 and c2["sample_refault_ticks"] > 0
    assert c["sample_resident"] > 0 and c["sample_resident_ticks"] > 0
    assert c["refaults"] >= c["sample_refaults"]

"""Fidelity to the sources (issue 13): each test pins one behaviour a design
module claims from a kernel file or a 2019 patch."""

from __future__ import annotations

import numpy as np
import pytest
from cli import assert_usage_error, shmalloc
from reporting_helpers import RecordingDevice, design, host_takes

from hypervisor_stub.hostscan import HostScanner
from hypervisor_stub.stub import Hypervisor, StubOptions
from launcher.experiment import designs
from launcher.output import results
from shmalloc import invariants, snapshot, virtqueue
from shmalloc.freelist import rotate_free_list_to_front
from shmalloc.layout import (
    AG_DRAIN_DONE,
    AG_DRAIN_REQ,
    CALLER_REPORTER,
    HOOK_BITMAP,
    HOOK_HOSTSCAN,
    HOOK_MAINLINE,
    LS_ACQUISITIONS,
    LS_HOLD_TOTAL,
    MIGRATE_MOVABLE,
    PCP_COUNT,
    PG_REPORTED,
    ROLE_HYPERVISOR,
    ROLE_WORKER,
    RS_ACK_WAIT_TICKS,
    RS_BLOCKS_WALKED,
    RS_DRAIN_REQUESTS,
    RS_HV_ERRORS,
    RS_HV_PAGES_DISCARDED,
    RS_HV_RANGES,
    RS_PCP_DRAINS,
    RS_RE_REPORTS,
    RS_REFCNT,
    RS_REPORT_ERRORS,
    RS_REPORTED_SKIPPED,
    RS_REPORTS,
    RS_VQ_FULL,
    Z_BITMAP_COUNT,
    zone_base,
)
from shmalloc.reference import ReferenceAllocator
from shmalloc.reporting import frame_bit


def reporter_locks(m, zone: int = 0) -> tuple[int, int]:
    """(acquisitions, hold ticks) of the zone lock by the reporter."""
    ls = m.layout.lockstat(zone, CALLER_REPORTER)
    return int(m.zs[ls + LS_ACQUISITIONS]), int(m.zs[ls + LS_HOLD_TOTAL])


def free_list(m, order: int, zone: int = 0) -> list[int]:
    return snapshot.free_areas(m).get((zone, order, MIGRATE_MOVABLE), [])


# -- item 1: buddy_merge_likely and the put-back placement -------------------------------


@pytest.mark.nojit
def test_buddy_merge_likely_sends_a_block_to_the_tail(make_machine):
    """5.7's __free_one_page: a block whose parent's buddy is free goes to
    the tail; engine and reference agree on the list's order."""
    m = make_machine(memory=16 << 20, pcp_batch=0)
    ref = ReferenceAllocator(m.nr_pages, 1, m.max_order, m.control_agent + 1, 0, 1)
    a = m.control_agent
    for _ in range(8):                             # pfns 0..7, one by one
        assert m.alloc(0) == ref.alloc(a, 0)
    for p in (6, 2, 3, 0):
        m.free(p, 0)
        assert ref.free(a, p, 0) == 0
    # 6: buddy 7 held, parent (6, o1)'s buddy (4, o1) held: the head;
    # 2 and 3 merge into (2, o1); then 0: buddy 1 held, but its parent's
    # buddy (2, o1) is free, so 0 goes to the tail, behind 6
    assert free_list(m, 0) == [6, 0]
    assert ref.free_area[0][0][MIGRATE_MOVABLE] == [6, 0]
    assert snapshot.free_areas(m) == {(0, o, mt): lst for o in range(m.max_order)
                                      for mt, lst in enumerate(ref.free_area[0][o]) if lst}
    assert invariants.check(m, held={a: [(1, 0), (4, 0), (5, 0), (7, 0)]}) == []


@pytest.mark.nojit
def test_buddy_merge_likely_at_the_three_highest_orders(make_machine):
    """5.7's guard, held directly in the engine and in the reference, each
    against the answer rather than against the other: at MAX_ORDER - 3 a
    block whose parent's buddy is a free head is likely to merge; at
    MAX_ORDER - 2 and MAX_ORDER - 1 never, although at MAX_ORDER - 2 the
    parent's buddy is a free head too."""
    from shmalloc.buddy import buddy_merge_likely
    m = make_machine(memory=16 << 20, pcp_batch=0)   # four order-10 blocks
    top = m.max_order
    a = m.control_agent
    ref = ReferenceAllocator(m.nr_pages, 1, top, a + 1, 0, 1)
    assert m.alloc(top - 3) == ref.alloc(a, top - 3) == 0
    # the first order-10 block split: 0 held (order 8), 256 free (8), 512 free (9);
    # the parents' buddies: of (0, 8) the free order-9 block at 512, of (0, 9) the
    # free order-10 block at 1024, of (0, 10) pfn 2048, a free head but of order 10
    assert free_list(m, top - 2) == [512] and free_list(m, top - 1) == [1024, 2048, 3072]
    for order, likely in ((top - 3, True), (top - 2, False), (top - 1, False)):
        assert bool(buddy_merge_likely(m.frames, 0, order, top)) is likely, order
        assert ref.merge_likely(0, order) is likely, order
    m.free(0, top - 3)
    assert invariants.check(m) == []


@pytest.mark.nojit
@pytest.mark.parametrize("putback", ["head", "tail"])
def test_mainline_puts_reported_blocks_back_where_putback_says(make_machine, putback):
    """Blocks freed while a report is out are unreported and still backed by
    the host.  5.7 (head) drains the reported batch in front of them, so the
    next allocations take memory the host discarded; 5.10 (tail) behind."""
    m = make_machine(memory=64 << 20, pcp_batch=0, strategy=HOOK_MAINLINE)
    hv = Hypervisor(m, StubOptions(discard="punch"))
    m.mem[::512] = 1                               # the guest wrote every page
    held = [m.alloc(10) for _ in range(4)]
    dev = RecordingDevice(hypervisor=hv)

    def free_held_during_the_last_report():
        if len(dev.reports) == 2:                  # 8 blocks, then the leftover 4
            for p in held:
                m.free(p, 10)

    dev.on_report = free_held_during_the_last_report
    d = design(m, "mainline", device=dev, capacity=8, putback=putback)
    d.process()
    assert [len(r) for r in dev.reports] == [8, 4]
    reported = {p for p, _ in dev.ranges()}
    assert len(reported) == 12 and not reported & set(held)
    first = set(free_list(m, 10)[:4])
    assert first == ({p for p, _ in dev.reports[1]} if putback == "head" else set(held))
    taken = [m.alloc(10) for _ in range(4)]
    discarded = [p for p in taken if m.resident_pages(p, 1024) == 0]
    assert len(discarded) == (4 if putback == "head" else 0)
    assert all(not m.frames[p]["flags"] & PG_REPORTED for p in taken)
    assert invariants.check(m, held={m.control_agent: [(p, 10) for p in taken]}) == []


@pytest.mark.nojit
@pytest.mark.parametrize("putback,skipped", [("head", 8), ("tail", 0)])
def test_mainline_head_steps_over_each_drained_batch_under_the_lock(make_machine, putback,
                                                                     skipped):
    """5.7's page_reporting_cycle restarts its walk at the head after each
    drain ("the old next isn't valid"): with head put-back it first steps
    over the batch it has just drained, under the zone lock, until it
    rotates the list; with tail put-back that batch is behind."""
    m = make_machine(memory=64 << 20, pcp_batch=0, strategy=HOOK_MAINLINE)
    d = design(m, "mainline", capacity=4, putback=putback)
    assert d.process() is True                     # budget ceil(16 / 64) = 1: 2 reports
    assert [len(r) for r in d.device.reports] == [4, 4]
    assert m.zs[m.layout.off_report + RS_REPORTED_SKIPPED] == skipped
    assert invariants.check(m) == []


def test_putback_is_recorded_shown_and_checked():
    from launcher.experiment.config import RunConfig
    from launcher.output.summary import describe
    cfg = RunConfig(strategy="mainline").resolved()
    assert cfg.putback == "head"                   # 5.7
    assert describe(cfg.__dict__).endswith(", putback head")
    assert RunConfig(strategy="isolate", putback="tail").resolved().putback == "tail"
    assert RunConfig(strategy="boundary").resolved().putback is None
    assert "putback" not in describe(RunConfig(strategy="bitmap").resolved().__dict__)


@pytest.mark.parametrize("argv,flag,text", [
    (["run", "--strategy", "mainline", "--putback", "middle"], "--putback", "head or tail"),
    (["run", "--strategy", "boundary", "--putback", "head"], "--putback", "by construction"),
    (["run", "--strategy", "mainline", "--walk-order", "3"], "--walk-order", "callback only"),
    (["run", "--strategy", "callback", "--walk-order", "10"], "--walk-order", "--report-order"),
    (["run", "--strategy", "isolate", "--callback-ns", "5"], "--callback-ns", "callback only"),
    (["run", "--strategy", "mainline", "--free-page-vq", "8"], "--free-page-vq", "callback only"),
    (["run", "--strategy", "callback", "--free-page-vq", "0"], "--free-page-vq", "1..65536"),
])
def test_fidelity_flags_refuse_bad_input(argv, flag, text):
    assert_usage_error(shmalloc(*argv), "shmalloc run:", flag, text)


def test_compare_applies_putback_to_the_designs_that_take_it():
    from dataclasses import replace

    from launcher.comparison.compare import config_for
    from launcher.experiment.config import RunConfig
    base = replace(RunConfig(), putback="tail", walk_order=3)
    assert config_for(base, "mainline").putback == "tail"
    assert config_for(base, "boundary").putback is None
    assert config_for(base, "callback/hint").walk_order == 3
    assert config_for(base, "isolate").walk_order is None
    res = shmalloc("compare", "--strategies", "none,boundary", "--putback", "tail")
    assert_usage_error(res, "shmalloc compare:", "--putback", "no design")


# -- item 2: callback walks every order, paying per block under the lock ----------------


def fragmented(make_machine, hook):
    m = make_machine(memory=64 << 20, pcp_batch=0, strategy=hook)
    held = [m.alloc(0) for _ in range(600)]
    for p in held[::2]:                            # many small free blocks
        m.free(p, 0)
    return m


@pytest.mark.nojit
def test_callback_walks_down_to_walk_order_and_reports_from_report_order(make_machine):
    m = fragmented(make_machine, 0)
    free = snapshot.free_areas(m)
    blocks = {o: sum(len(v) for (z, oo, mt), v in free.items() if oo == o)
              for o in range(m.max_order)}
    for walk_order, lists in ((9, 2 * 2), (0, 11 * 2)):
        before = reporter_locks(m)[0]
        walked = int(m.zs[m.layout.off_report + RS_BLOCKS_WALKED])
        d = design(m, "callback", walk_order=walk_order, callback_ns=0)
        d.start()
        d.process()
        assert reporter_locks(m)[0] - before == lists          # one hold per list
        visited = int(m.zs[m.layout.off_report + RS_BLOCKS_WALKED]) - walked
        assert visited == sum(blocks[o] for o in range(walk_order, m.max_order))
        sent = host_takes(m)                                   # on the free page virtqueue
        assert sent == [(p, o) for o in range(m.max_order - 1, 8, -1)
                        for p in free.get((0, o, MIGRATE_MOVABLE), [])]   # walk order, 9 up
        assert d.device.reports == []                          # nothing waits for the host
    assert blocks[0] >= 299                                     # the walk saw them all


@pytest.mark.nojit
def test_callback_sends_each_block_as_the_walk_reaches_it(make_machine, monkeypatch):
    """v14's send_free_page_sg adds and kicks under the hold, per block: the
    host has the first list's blocks, and discards them, before the walk
    takes its next list (here the host takes between the two holds; the
    stub takes at the kick, while the walk goes on)."""
    from reporter import callback
    m = make_machine(memory=64 << 20, pcp_batch=0)
    held = m.alloc(9)                              # 15 order-10 blocks, one order-9
    hv = Hypervisor(m, StubOptions(discard="punch"))
    m.mem[::512] = 1                               # the guest touched everything
    lists = {o: free_list(m, o) for o in (10, 9)}
    assert lists[10] and lists[9]
    taken = []
    real = callback.walk_free_mem_block

    def walk(frames, zs, agent, zone, order, mt, *rest):
        out = real(frames, zs, agent, zone, order, mt, *rest)
        taken.append((order, mt, host_takes(m, hv)))           # between two holds
        return out

    monkeypatch.setattr(callback, "walk_free_mem_block", walk)
    d = design(m, "callback", callback_mode="discard", walk_order=9, callback_ns=0)
    d.start()
    d.process()
    assert taken == [(10, MIGRATE_MOVABLE, [(p, 10) for p in lists[10]]), (10, 1, []),
                     (9, MIGRATE_MOVABLE, [(p, 9) for p in lists[9]]), (9, 1, [])]
    assert all(m.resident_pages(p, 1024) == 0 for p in lists[10])   # discarded by then
    st = m.layout.off_report
    n = len(lists[10]) + len(lists[9])
    assert m.zs[st + RS_REPORTS] == n and m.zs[st + RS_HV_RANGES] == n
    assert m.zs[st + RS_ACK_WAIT_TICKS] == 0 and d.device.reports == []
    assert invariants.check(m, held={m.control_agent: [(held, 9)]}) == []


@pytest.mark.nojit
def test_callback_drops_blocks_the_full_free_page_virtqueue_cannot_take(make_machine):
    """v14 ignored add_one_sg's error: with the ring full, a block is not
    reported.  Counted in vq_full; the host takes what fits."""
    m = make_machine(memory=64 << 20, pcp_batch=0, free_page_vq=4)   # 16 order-10 blocks
    d = design(m, "callback", walk_order=9, callback_ns=0)
    d.start()
    d.process()
    st = m.layout.off_report
    assert (m.zs[st + RS_REPORTS], m.zs[st + RS_VQ_FULL]) == (4, 12)
    assert host_takes(m) == [(p, 10) for p in free_list(m, 10)[:4]]
    d.process()                                    # the host took them: four more fit
    assert (m.zs[st + RS_REPORTS], m.zs[st + RS_VQ_FULL]) == (8, 24)


def test_free_page_vq_flag_sizes_the_ring():
    from launcher.experiment.config import RunConfig
    assert RunConfig(strategy="callback").resolved().machine_config().free_page_vq == 1024
    cfg = RunConfig(strategy="callback", free_page_vq=8).resolved()
    assert cfg.machine_config().free_page_vq == 8


@pytest.mark.nojit
def test_callback_host_counts_a_block_received_again_with_no_page_held(make_machine):
    m = make_machine(memory=16 << 20, pcp_batch=0)
    hv = Hypervisor(m, StubOptions(discard="punch"))
    d = design(m, "callback", callback_mode="discard", walk_order=9, callback_ns=0)
    d.start()
    m.mem[::512] = 1
    d.process()
    first = host_takes(m, hv)                      # discarded
    assert first and m.zs[m.layout.off_report + RS_RE_REPORTS] == 0
    d.process()
    assert host_takes(m, hv) == first              # again, and the host holds none of it
    assert m.zs[m.layout.off_report + RS_RE_REPORTS] == len(first)


@pytest.mark.nojit
def test_callback_walks_every_order_by_default(make_machine):
    """v14's driver calls walk_free_mem_block(vb, 0, ...): with no
    --walk-order, the run's configuration, the reporter's options and the
    design all walk down to order 0."""
    from launcher.experiment.config import RunConfig
    from reporter import ReporterOptions
    assert RunConfig(strategy="callback").resolved().walk_order == 0
    assert RunConfig(strategy="callback").resolved().reporter_options().walk_order == 0
    assert ReporterOptions(design="callback", delay=0.0, capacity=4, report_order=9).walk_order == 0
    m = fragmented(make_machine, 0)
    free = snapshot.free_areas(m)
    d = design(m, "callback", callback_ns=0)       # walk_order not given
    d.start()
    d.process()
    assert reporter_locks(m)[0] == m.max_order * 2             # every order, both lists
    assert int(m.zs[m.layout.off_report + RS_BLOCKS_WALKED]) == sum(map(len, free.values()))


@pytest.mark.nojit
def test_callback_pays_its_per_block_cost_inside_the_hold(make_machine):
    m = fragmented(make_machine, 0)
    d = design(m, "callback", walk_order=0, callback_ns=20_000)
    d.start()
    d.process()
    visited = int(m.zs[m.layout.off_report + RS_BLOCKS_WALKED])
    held_s = reporter_locks(m)[1] / m.ticks_per_sec
    assert visited > 300
    assert held_s >= visited * 20e-6                           # every block paid, locked


def test_callback_cost_is_calibrated_when_not_given(make_machine):
    from reporter.callback import calibrate_callback_ns
    m = make_machine(memory=16 << 20)
    ns = calibrate_callback_ns(m.run_id)           # a private queue, unlinked at once
    assert 100 < ns < 1_000_000


# -- item 3: isolate pays set_migratetype_isolate per pageblock ------------------------


@pytest.mark.nojit
def test_isolate_takes_the_lock_and_drains_once_per_pageblock(make_machine):
    """5.7: set_migratetype_isolate and unset_migratetype_isolate take the
    zone lock once per pageblock, and each pageblock isolated is followed by
    drain_all_pages, which asks every worker holding pcp pages of the zone
    (cpus_with_pcps), once.  Workers 0 and 1 hold pcp pages and keep them
    (they acknowledge each request, as a worker that refills its lists at
    once would); worker 2 holds none and is never asked."""
    import threading
    import time

    m = make_machine(memory=64 << 20, pcp_batch=8, pcp_high=48, capacity=4, workers=3)
    acting = m.agent
    for w in range(3):
        m.bind(w, ROLE_WORKER)
    m.agent = acting
    held = {w: m.alloc(0, agent=w) for w in (0, 1)}   # each refills its pcp list
    pcp = [int(m.zs[m.layout.pcp(w, 0) + PCP_COUNT]) for w in range(3)]
    assert pcp[0] > 0 and pcp[1] > 0 and pcp[2] == 0
    stop = threading.Event()

    def acknowledge():                             # the workers' pcp path, but keeping pages
        while not stop.is_set():
            for w in range(3):
                base = m.layout.agent(w)
                m.zs[base + AG_DRAIN_DONE] = m.zs[base + AG_DRAIN_REQ]
            time.sleep(1e-4)

    server = threading.Thread(target=acknowledge, daemon=True)
    server.start()
    try:
        d = design(m, "isolate", capacity=4)
        d.process()
    finally:
        stop.set()
        server.join()
    got = d.device.ranges()
    pageblocks = sum(1 << (o - 9) for _, o in got)
    assert pageblocks == 15 * 2 + 1               # 15 order-10 blocks, one order-9
    walk_holds = 2 * 2                             # orders 10 and 9, two migratetypes
    st = m.layout.off_report
    assert reporter_locks(m)[0] == walk_holds + pageblocks + pageblocks   # isolate, undo
    assert m.zs[st + RS_PCP_DRAINS] == pageblocks
    assert m.zs[st + RS_DRAIN_REQUESTS] == 2 * pageblocks
    assert [int(m.zs[m.layout.agent(w) + AG_DRAIN_REQ]) for w in range(3)] \
        == [pageblocks, pageblocks, 0]
    assert invariants.check(m, held={w: [(p, 0)] for w, p in held.items()}) == []


@pytest.mark.nojit
def test_isolate_undo_restores_each_pageblock_and_merges_at_the_head(make_machine):
    """undo_isolate_page_range: one hold per isolated pageblock; the block
    goes back through the free path in its head's hold, merging with the
    buddy freed while it was isolated; a block not isolated costs no hold."""
    from reporter.isolate import isolate_pageblock, undo_isolate_page_range
    m = make_machine(memory=32 << 20, max_order=12, pcp_batch=0)   # four order-11 blocks
    d = design(m, "isolate", capacity=4)          # binds the reporter agent
    rep, zone = m.reporter_agent, 0
    a = m.alloc(10)                                # splits the first: a held, b free
    b = a ^ 1024
    assert free_list(m, 10) == [b]
    for pageblock in (b, b + 512):
        assert isolate_pageblock(m.frames, m.zs, rep, zone, b, 10, pageblock)
    m.free(a, 10)                                  # cannot merge with the isolated b
    assert free_list(m, 10) == [a] and m.frames[a]["order"] == 10
    acq = reporter_locks(m)[0]
    undo_isolate_page_range(m.frames, m.zs, rep, zone, b, 10, False)
    assert reporter_locks(m)[0] - acq == 2         # a hold per pageblock
    assert free_list(m, 10) == [] and free_list(m, 11)[0] == min(a, b)   # merged
    assert all(m.zs[m.layout.off_pageblock + (p >> 9)] == MIGRATE_MOVABLE
               for p in range(0, 2048, 512))
    acq = reporter_locks(m)[0]
    undo_isolate_page_range(m.frames, m.zs, rep, zone, b, 10, False)
    assert reporter_locks(m)[0] == acq             # nothing isolated: no hold
    assert d.name == "isolate" and invariants.check(m) == []


@pytest.mark.timeout(300)
def test_isolate_drains_idle_workers_pcp_lists(tmp_path):
    """hog workers sit idle in _idle with pages on their pcp lists: they
    serve drain_all_pages's requests, and the run ends normally."""
    out = tmp_path / "r.json"
    res = shmalloc("run", "--strategy", "isolate", "--workload", "hog", "--memory", "256M",
                   "--duration", "4", "--delay", "0.5", "--json", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    run = results.load(str(out))["runs"][0]
    rep = run["reporting"]
    workers = run["config"]["workers"]
    assert rep["pcp_drains"] > 0
    # each drain asks each worker holding pcp pages once: idle hogs keep the pages
    # their last frees left, until the first drain takes them
    assert 0 < rep["drain_requests"] <= workers * rep["pcp_drains"]
    assert rep["cycles"] >= 3                      # a pass every 0.5 s: no drain hung
    assert run["safety"]["invariant_errors"] == []


@pytest.mark.timeout(300)
def test_isolate_does_not_wait_for_a_stopped_worker_past_the_watchdog():
    import time
    t0 = time.monotonic()
    res = shmalloc("run", "--strategy", "isolate", "--memory", "256M", "--duration", "30",
                   "--delay", "0.2", "--stall-timeout", "2", "--inject", "stop-worker@1",
                   "--quiet")
    assert res.returncode == 3, res.stderr
    assert "stopped" in res.stderr
    assert time.monotonic() - t0 < 60


# -- item 4: bitmap as v12 -----------------------------------------------------------------


@pytest.mark.nojit
def test_bitmap_wakes_once_at_the_threshold_and_again_after_the_pass(make_machine):
    """v12: the free path queues a pass when the zone has at least max_pages
    set bits and none is queued (refcnt 0 -> 1); bits set during a pass wait,
    and the next free past the threshold queues the next pass."""
    m = make_machine(memory=64 << 20, pcp_batch=0, capacity=4, strategy=HOOK_BITMAP)
    refcnt = m.layout.off_report + RS_REFCNT
    count = zone_base(0) + Z_BITMAP_COUNT
    held = [m.alloc(0) for _ in range(64)]         # keeps order-9 frees from merging up
    blocks = [m.alloc(9) for _ in range(18)]       # pairs of buddies: free one of each
    late, early, extra = blocks[0:8:2], blocks[8:16:2], blocks[16]
    for b in early[:3]:
        m.free(b, 9)
    assert m.zs[count] == 3 and m.wake.value == 0  # below max_pages: no wake-up
    m.free(early[3], 9)
    assert m.wake.value == 1 and m.zs[refcnt] == 1

    dev = RecordingDevice()

    def free_late_blocks():                        # bits behind the scan, set during it
        if len(dev.reports) == 1:
            for b in late:
                m.free(b, 9)
            assert m.wake.value == 1               # refcnt 1: no second wake-up

    dev.on_report = free_late_blocks
    d = design(m, "bitmap", device=dev, capacity=4)
    before = reporter_locks(m)[0]
    assert d.process() is False                    # no re-check at the end of a pass
    assert sorted(dev.ranges()) == sorted((b, 9) for b in early)
    assert reporter_locks(m)[0] - before == 4 + 1  # a hold per set bit, one per return
    assert m.zs[count] == 4 and m.zs[refcnt] == 0
    m.free(extra, 9)                               # 5 >= max_pages, refcnt 0: queued
    assert m.wake.value == 2 and m.zs[refcnt] == 1
    for p in held:
        m.free(p, 0)
    for p in blocks[1:18:2]:
        m.free(p, 9)
    assert invariants.check(m) == []


@pytest.mark.nojit
def test_bitmap_free_hook_takes_v12s_locked_instructions_on_every_free(make_machine,
                                                                     monkeypatch):
    """v12's bitmap_set_bit and __page_reporting_enqueue: test_and_set_bit
    on every free of a report-order block, atomic_inc when the bit was
    clear, and past the threshold the atomic_cmpxchg on refcnt on every
    free, also when a pass is already queued and it fails (no plain read of
    refcnt first).  Counted through the hook's atomics as plain Python."""
    from shmalloc import reporting
    from shmalloc.config import JIT_DISABLED
    if not JIT_DISABLED:
        pytest.skip("counts the hook's atomics as plain Python: runs in tests/test_nojit.py")
    m = make_machine(memory=64 << 20, pcp_batch=0, capacity=4, strategy=HOOK_BITMAP)
    count_slot = zone_base(0) + Z_BITMAP_COUNT
    refcnt = m.layout.off_report + RS_REFCNT
    calls = {"test_and_set_bit": 0, "atomic_inc": 0, "cmpxchg": 0}

    def atomic_or(arr, idx, bits):
        calls["test_and_set_bit"] += 1
        prev = int(arr[idx])
        arr[idx] = prev | bits
        return prev

    def atomic_add(arr, idx, delta):
        calls["atomic_inc"] += idx == count_slot
        prev = int(arr[idx])
        arr[idx] = prev + delta
        return prev

    def atomic_cas(arr, idx, old, new):
        calls["cmpxchg"] += idx == refcnt
        prev = int(arr[idx])
        if prev == old:
            arr[idx] = new
        return prev

    for name, fn in (("atomic_or", atomic_or), ("atomic_add", atomic_add),
                     ("atomic_cas", atomic_cas)):
        monkeypatch.setattr(reporting, name, fn)
    held = [m.alloc(0) for _ in range(64)]         # keeps order-9 frees from merging up
    blocks = [m.alloc(9) for _ in range(12)]
    for b in blocks[0:12:2]:                       # six frees, none merges
        m.free(b, 9)
    # six bits set and counted; frees 4, 5 and 6 find the zone at the threshold: the
    # first queues the pass (refcnt 0 -> 1, one wake-up), the next two fail the cmpxchg
    assert calls == {"test_and_set_bit": 6, "atomic_inc": 6, "cmpxchg": 3}
    assert m.zs[count_slot] == 6 and m.zs[refcnt] == 1 and m.wake.value == 1
    for p in held:
        m.free(p, 0)
    for b in blocks[1:12:2]:
        m.free(b, 9)
    assert invariants.check(m) == []


@pytest.mark.nojit
def test_bitmap_scans_only_zones_at_the_threshold(make_machine):
    m = make_machine(memory=64 << 20, zones=2, pcp_batch=0, capacity=4, strategy=HOOK_BITMAP)
    count = [zone_base(z) + Z_BITMAP_COUNT for z in range(2)]
    held = [m.alloc(0) for _ in range(64)]
    blocks = [m.alloc(9) for _ in range(5)]        # all from the first zone
    zone = m.zone_of(blocks[0]) if hasattr(m, "zone_of") else blocks[0] // (m.nr_pages // 2)
    for b in blocks[:2]:
        m.free(b, 9)
    other = 1 - zone
    m.zs[count[other]] = 0
    d = design(m, "bitmap", capacity=4)
    d.process()
    assert d.device.reports == []                  # 2 bits < max_pages: not scanned
    assert m.zs[count[zone]] == 2
    for p in held + blocks[2:]:
        m.free(p, 9 if p in blocks else 0)


# -- item 5: hostscan walks past marked blocks -------------------------------------------


@pytest.mark.nojit
def test_hostscan_takes_unmarked_blocks_behind_a_marked_remainder(make_machine):
    m = make_machine(memory=64 << 20, pcp_batch=0, strategy=HOOK_HOSTSCAN)
    acting = m.agent
    m.bind(m.hypervisor_agent, ROLE_HYPERVISOR)
    m.agent = acting
    scanner = HostScanner(Hypervisor(m, StubOptions(discard="punch")), m.hypervisor_agent,
                          4, 1.0)
    a = [m.alloc(9) for _ in range(4)]             # two order-10 blocks, held
    scanner.scan()                                 # every free frame marked and discarded
    q = m.alloc(9)                                 # splits a marked order-10 block: its
    remainder = q + 512                            # upper half, still marked, on list 9
    assert free_list(m, 9) == [remainder]
    m.mem[a[0] * 512:(a[0] + 512) * 512:512] = 1  # written, then freed: unmarked, resident
    m.mem[a[2] * 512:(a[2] + 512) * 512:512] = 1
    m.free(a[0], 9)
    m.free(a[2], 9)
    rotate_free_list_to_front(m.frames, m.zs, 0, 9, MIGRATE_MOVABLE, remainder)
    assert free_list(m, 9) == [remainder, a[2], a[0]]          # marked head, unmarked behind
    scanner.scan()
    for p in (a[0], a[2]):
        word, bit = frame_bit(m.zs, 0, p)
        assert m.zs[word] & bit, f"{p} not reclaimed"
        assert m.resident_pages(p, 512) == 0
    assert invariants.check(m, held={m.control_agent: [(a[1], 9), (a[3], 9), (q, 9)]}) == []


@pytest.mark.nojit
def test_hostscan_discards_and_counts_only_the_unmarked_half_of_a_merged_block(make_machine):
    """A merge puts a reclaimed frame and one the guest wrote since into one
    free block, partly marked: the next scan punches out only the unmarked
    frame, counts only its pages, and then both frames are marked."""
    m = make_machine(memory=64 << 20, pcp_batch=0, strategy=HOOK_HOSTSCAN)
    acting = m.agent
    m.bind(m.hypervisor_agent, ROLE_HYPERVISOR)
    m.agent = acting
    hv = Hypervisor(m, StubOptions(discard="punch"))
    punched = []
    real = hv.discard_pages

    def discard_pages(pfn, pages):
        punched.append((pfn, pages))
        return real(pfn, pages)

    hv.discard_pages = discard_pages
    scanner = HostScanner(hv, m.hypervisor_agent, 4, 1.0)
    y = m.alloc(9)                                 # its buddy x stays free, on list 9
    x = y ^ 512
    assert free_list(m, 9) == [x]
    scanner.scan()                                 # x and every order-10 block reclaimed
    discarded = m.layout.off_report + RS_HV_PAGES_DISCARDED
    first = int(m.zs[discarded])
    assert first == m.nr_pages - 512 and (x, 512) in punched
    m.mem[y * 512:(y + 512) * 512:512] = 1         # the guest writes y, then frees it:
    m.free(y, 9)                                   # merged with x, one frame of two marked
    head = min(x, y)
    assert free_list(m, 9) == [] and head in free_list(m, 10)
    assert [bool(m.zs[w] & b) for w, b in (frame_bit(m.zs, 0, x), frame_bit(m.zs, 0, y))] \
        == [True, False]
    del punched[:]
    scanner.scan()
    assert punched == [(y, 512)]                   # only the frame not yet reclaimed
    assert int(m.zs[discarded]) - first == 512     # counted once
    assert all(m.zs[w] & b for w, b in (frame_bit(m.zs, 0, x), frame_bit(m.zs, 0, y)))
    assert m.resident_pages(head, 1024) == 0
    assert invariants.check(m) == []


# -- item 6: the stub acknowledges as QEMU does ---------------------------------------------


@pytest.mark.nojit
def test_stub_acknowledges_success_and_counts_a_failed_discard(make_machine):
    m = make_machine(memory=16 << 20)
    hv = Hypervisor(m, StubOptions(discard="punch"))
    real = hv.discard
    hv.discard = lambda pfn, order: -5 if pfn == 512 else real(pfn, order)
    assert hv.handle(virtqueue.KIND_REPORT, [(0, 9), (512, 9), (1024, 9)]) == 0
    st = m.layout.off_report
    assert m.zs[st + RS_HV_ERRORS] == 1
    assert m.zs[st + RS_HV_PAGES_DISCARDED] == 2 * 512


@pytest.mark.nojit
def test_mainline_marks_blocks_reported_after_a_failed_discard(make_machine):
    m = make_machine(memory=64 << 20, pcp_batch=0, strategy=HOOK_MAINLINE)
    hv = Hypervisor(m, StubOptions(discard="punch"))
    hv.discard = lambda pfn, order: -5
    d = design(m, "mainline", device=RecordingDevice(hypervisor=hv))
    d.process()
    got = d.device.ranges()
    st = m.layout.off_report
    assert m.zs[st + RS_HV_ERRORS] == len(got)           # every discard failed ...
    assert m.zs[st + RS_REPORT_ERRORS] == 0              # ... and each report was acknowledged
    assert got and all(m.frames[p]["flags"] & PG_REPORTED for p, _ in got)


# -- item 7: page_reporting_order ------------------------------------------------------------


def test_report_order_help_names_page_reporting_order():
    res = shmalloc("run", "--help")
    assert res.returncode == 0
    assert "page_reporting_order" in " ".join(res.stdout.split())


def test_designs_that_take_putback():
    assert {n for n, d in designs.DESIGNS.items() if d.putback} == {"mainline", "isolate"}
    assert np.all([d.putback in (None, "head") for d in designs.DESIGNS.values()])

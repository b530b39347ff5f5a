"""Every registered design, on a quiescent machine and under concurrent
workers.  Parametrized over the registries, so a design added later is
checked by this suite without new test code."""

from __future__ import annotations

import re

import numpy as np
import pytest
from cli import shmalloc
from reporting_helpers import RecordingDevice, design, free_blocks_at_least, host_takes
from runs import elapsed, report_count, run_until, worker_total

from hypervisor_stub.stub import Hypervisor, StubOptions
from launcher.experiment import designs
from launcher.output import results
from reporter import IMPLEMENTATIONS
from reporter.process import ReportingDesign
from shmalloc import invariants, snapshot
from shmalloc.layout import MIGRATE_ISOLATE, RS_RE_REPORTS, WC_USE_AFTER_DISCARD

REPORTING = sorted(IMPLEMENTATIONS)


def make(make_machine, name: str):
    return make_machine(memory=64 << 20, zones=2, pcp_batch=0, capacity=4,
                        strategy=designs.DESIGNS[name].hook)   # design()'s capacity


def fragment(m):
    held = [m.alloc(0) for _ in range(300)] + [m.alloc(9) for _ in range(3)] + [m.alloc(4)]
    for p in held[:300:3]:
        m.free(p, 0)
    freed = [m.alloc(9) for _ in range(8)]        # freed through the free path: the
    for p in freed[::2] + freed[1::2]:             # hooks of every design see them (bitmap:
        m.free(p, 9)                               # 4 bits, its threshold, in one zone)
    return held


def test_every_registered_reporter_is_a_launcher_design():
    assert set(REPORTING) == {n for n, d in designs.DESIGNS.items() if d.reporter}


@pytest.mark.nojit
@pytest.mark.parametrize("name", REPORTING)
def test_design_reports_only_free_blocks_of_report_order(make_machine, name):
    m = make(make_machine, name)
    fragment(m)
    free_big = set(free_blocks_at_least(m, 9))
    dev = RecordingDevice()
    d = design(m, name, device=dev)
    d.start()
    d.process()
    got = sorted(dev.ranges() + host_takes(m))     # callback sends on its virtqueue
    assert got, f"{name} reported nothing"
    assert all(order >= 9 for _, order in got)
    assert set(got) <= free_big                     # free blocks of the report order...
    assert len(got) == len(set(got))                # ...no block twice in one pass...
    if name in ("mainline", "boundary", "callback", "isolate"):
        assert set(got) == free_big                 # ...and every one of them
    assert invariants.check(m) == []


#: designs that leave the blocks they report on the free lists while the host
#: has them: Wang's walk, the window callback/discard loses data through
LEAVES_REPORTED_ON_THE_LISTS = {"callback"}


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    (p, o), (q, r) = a, b
    return p < q + (1 << r) and q < p + (1 << o)


def reported_blocks_handed_out(m, d, dev, batches: int = 2) -> list[tuple[int, int]]:
    """One pass of ``d``; while each of its first ``batches`` batches is with
    the host, allocate every block the allocator will give at each order in
    the batch (splitting larger blocks too), note those that overlap a block
    of the batch, and free them all again.  (Not every batch: what is freed
    is new free memory to report, and boundary's pass would never end.)
    Returns what was handed out although reported."""
    handed_out = []

    def allocate_at_the_reported_orders(batch=None):
        if batch is None:
            if len(dev.reports) > batches:
                return
            batch = dev.reports[-1]
        got = []
        for order in sorted({o for _, o in batch}):
            while (p := m.try_alloc(order)) is not None:
                got.append((p, order))
        handed_out.extend(b for b in got if any(overlaps(b, r) for r in batch))
        for p, o in got:
            m.free(p, o)

    dev.on_report = allocate_at_the_reported_orders
    d.start()
    d.process()
    sent = host_takes(m)                           # callback's blocks, on the way to the host
    if sent:
        allocate_at_the_reported_orders(sent)
    assert dev.reports or sent, "nothing was reported"
    return handed_out


@pytest.mark.nojit
@pytest.mark.parametrize("name", REPORTING)
def test_nothing_reported_is_handed_out(make_machine, name):
    """While a batch is with the host, no allocation at its orders may get
    one of its blocks, except from a design that leaves them on the lists."""
    m = make(make_machine, name)
    fragment(m)
    dev = RecordingDevice()
    handed_out = reported_blocks_handed_out(m, design(m, name, device=dev), dev)
    if name in LEAVES_REPORTED_ON_THE_LISTS:
        assert handed_out, f"{name} leaves reported blocks on the lists, yet none was handed out"
    else:
        assert handed_out == [], f"{name} handed out reported blocks {handed_out}"
    assert invariants.check(m) == []


class ReportsInPlace(ReportingDesign):
    """Broken on purpose: reports the free blocks of the report order and
    leaves them on the free lists meanwhile."""

    def process(self) -> bool:
        blocks = free_blocks_at_least(self.m, self.opts.report_order)
        cap = self.opts.capacity
        for i in range(0, len(blocks), cap):
            chunk = blocks[i:i + cap]
            for j, (p, o) in enumerate(chunk):
                self.batch_pfn[j], self.batch_order[j] = p, o
            self.report(len(chunk))
        return False


@pytest.mark.nojit
def test_a_design_that_hands_reported_blocks_out_is_caught(make_machine):
    m = make(make_machine, "none")
    fragment(m)
    dev = RecordingDevice()
    broken = design(m, "mainline", device=dev, cls=ReportsInPlace)
    assert reported_blocks_handed_out(m, broken, dev)


@pytest.mark.nojit
def test_isolate_hides_isolated_pageblocks_and_undo_merges(make_machine):
    m = make(make_machine, "isolate")
    fragment(m)
    before = {k: sorted(v) for k, v in snapshot.free_areas(m).items()}
    during = []

    def allocate_everything_possible():
        pb = m.zs[m.layout.off_pageblock: m.layout.off_pageblock + m.layout.nr_pageblocks]
        isolated = np.flatnonzero(pb == MIGRATE_ISOLATE)
        assert len(isolated) > 0
        got = []
        while (p := m.try_alloc(9)) is not None:   # drain every non-isolated block
            got.append(p)
        during.append((isolated, got))
        for p in got:
            m.free(p, 9)

    dev = RecordingDevice()
    dev.on_report = allocate_everything_possible
    design(m, "isolate", device=dev).process()
    for isolated, got in during:
        assert not set(p >> 9 for p in got) & set(isolated.tolist())
    pb = m.zs[m.layout.off_pageblock: m.layout.off_pageblock + m.layout.nr_pageblocks]
    assert (pb != MIGRATE_ISOLATE).all()            # migratetypes restored
    after = {k: sorted(v) for k, v in snapshot.free_areas(m).items()}
    assert after == before                          # merged back into the same blocks
    assert invariants.check(m) == []


@pytest.mark.nojit
def test_bitmap_counts_re_reports(make_machine):
    m = make(make_machine, "bitmap")
    hv = Hypervisor(m, StubOptions(discard="punch"))
    held = [m.alloc(0) for _ in range(200)]        # keep the zones from merging fully
    blocks = [m.alloc(9) for _ in range(16)]
    for b in blocks:                               # written, then freed: 16 bits set
        m.mem[b * 512:(b + 512) * 512:512] = 1
        m.free(b, 9)
    d = design(m, "bitmap", device=RecordingDevice(hypervisor=hv))
    d.process()
    first = d.device.ranges()
    assert first and all(m.resident_pages(p, 1 << o) == 0 for p, o in first)
    stats = m.layout.off_report
    assert m.zs[stats + RS_RE_REPORTS] == 0
    again = [m.alloc(9) for _ in range(16)]        # taken and freed without a write
    for b in again:
        m.free(b, 9)
    d.process()
    assert m.zs[stats + RS_RE_REPORTS] > 0          # reported although the host had nothing
    for p in held:
        m.free(p, 0)
    assert invariants.check(m) == []


@pytest.mark.nojit
def test_callback_discard_race_is_detected(make_machine):
    """The unsafe window, made to happen: between the walk and the discard a
    worker allocates a walked block and writes it; the discard zeroes it and
    the canary check at free counts a use-after-discard."""
    from shmalloc.workload import free_blocks, hog_alloc
    m = make(make_machine, "callback")
    hv = Hypervisor(m, StubOptions(discard="punch"))
    agent = 0
    pfns, orders = np.zeros(64, np.int64), np.zeros(64, np.int64)
    n = []

    def worker_allocates_and_writes():
        if not n:
            n.append(hog_alloc(m.frames, m.zs, m.mem, agent, 64, -1, 1.0, pfns, orders))

    d = design(m, "callback", callback_mode="discard")
    d.start()
    d.process()                                    # the walk sends every free block
    worker_allocates_and_writes()                  # before the host takes them
    assert len(host_takes(m, hv)) > 0              # the host discards what it was sent
    free_blocks(m.frames, m.zs, m.mem, agent, pfns, orders, n[0], 1.0)
    assert m.zs[m.layout.wstats(agent) + WC_USE_AFTER_DISCARD] == 64


# -- concurrent runs of every design -----------------------------------------------

LINEUP = ["none", "mainline", "boundary", "callback/hint", "callback/discard", "isolate",
          "bitmap"]
LINEUP += [n for n in designs.names() if n not in {x.split("/")[0] for x in LINEUP}]


#: every design gets this long under the workers before the run may end: a
#: window in which a design that loses data or breaks an invariant would
WINDOW_S = 2.0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("item", LINEUP)
def test_design_under_concurrent_workers(item):
    """Workers under every design: the run lasts until the design has done
    its work at least once (a report, a host scan, and for callback/discard
    the race it loses: a walked block allocated and written before the
    discard lands), and at least WINDOW_S."""
    name, _, mode = item.partition("/")
    design = designs.DESIGNS[name]
    flags = dict(strategy=name, workload="page_fault1", memory=256 << 20,
                 working_set=64 << 20)
    if name != "none":
        flags.update(delay=0.2, scan_interval=0.5)
    if mode:
        flags["callback_mode"] = mode
    if mode == "discard":
        flags["hv_latency"] = 0.3                # widen the window between walk and discard

    def done_its_work(run) -> bool:
        if elapsed(run) < WINDOW_S:
            return False
        if design.reporter and report_count(run, "reports") == 0:
            return False
        if design.host_scan and (report_count(run, "scans") == 0 or
                                 report_count(run, "hv_ranges") == 0):
            return False
        return mode != "discard" or worker_total(run, "use_after_discard") > 0

    run = run_until(done_its_work, **flags)
    assert run["safety"]["invariant_errors"] == []
    assert run["safety"]["double_allocations"] == 0
    if mode == "discard":
        assert run["safety"]["use_after_discard"] > 0, "the race was not detected"
    else:
        assert run["safety"]["use_after_discard"] == 0
    by_caller = run["locks"][0]["by_caller"]
    if design.reporter:
        assert run["reporting"]["reports"] > 0
        assert by_caller["reporter"]["acquisitions"] > 0
    if design.host_scan:
        assert run["reporting"]["scans"] > 0 and run["reporting"]["hv_ranges"] > 0
        assert by_caller["host"]["acquisitions"] > 0


def marked_unsafe(lines: list[str]) -> set[str]:
    """Labels of the rows of compare's tables that carry the UNSAFE marker."""
    return {line.split()[0] for line in lines if line.rstrip().endswith("<-- UNSAFE")}


@pytest.mark.timeout(600)
def test_compare_tiny(tmp_path):
    from launcher.comparison.compare import DEFAULT_LINEUP, unsafe
    from launcher.comparison.tables import format_tables
    out = tmp_path / "c.json"
    res = shmalloc("compare", "--memory", "64M", "--duration", "1", "--json", str(out))
    assert res.returncode == 0, res.stderr
    # stderr is not a terminal: one line per run as it ends, and nothing else
    assert re.fullmatch(r"(shmalloc compare: \[\d+/\d+\] round \d+ \S+ +ok\n)+", res.stderr), \
        res.stderr
    assert res.stderr.count("\n") == len(DEFAULT_LINEUP)
    doc = results.load(str(out))
    labels = [r["label"] for r in doc["runs"]]
    assert sorted(labels) == sorted(DEFAULT_LINEUP)          # one round, in a random order
    for label in labels:      # locks, gives back, at what risk, where the cost went
        assert sum(line.startswith(label + " ") for line in res.stdout.splitlines()) == 4
    # the marker sits on exactly the rows of the runs that were unsafe, and
    # only callback/discard may be unsafe (its race may or may not have
    # happened in 1 s)
    runs = doc["runs"]
    unsafe_labels = {r["label"] for r in runs if unsafe(r)}
    assert unsafe_labels <= {"callback/discard"}
    assert marked_unsafe(res.stdout.splitlines()) == unsafe_labels
    # made to have happened, the race marks callback/discard's row and no other
    victim = next(r for r in runs if r["label"] == "callback/discard")
    victim["safety"]["use_after_discard"] = max(victim["safety"]["use_after_discard"], 7)
    lines = format_tables(runs)
    assert marked_unsafe(lines) == {"callback/discard"}
    assert [line.split(":")[1].strip() for line in lines if line.startswith("UNSAFE:")] == \
        ["callback/discard"]

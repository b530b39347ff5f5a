"""Every registered design, on a quiescent machine and under concurrent
workers.  Parametrized over the registries, so a design added later is
checked by this suite without new test code."""

from __future__ import annotations

import numpy as np
import pytest
from cli import shmalloc
from reporting_helpers import RecordingDevice, design, free_blocks_at_least

from hypervisor_stub.stub import Hypervisor, StubOptions
from launcher import designs, results
from reporter import IMPLEMENTATIONS
from shmalloc import invariants, snapshot
from shmalloc.layout import MIGRATE_ISOLATE, RS_RE_REPORTS, WC_USE_AFTER_DISCARD

REPORTING = sorted(IMPLEMENTATIONS)


def make(make_machine, name: str):
    return make_machine(memory=64 << 20, zones=2, pcp_batch=0,
                        strategy=designs.DESIGNS[name].hook)


def fragment(m):
    held = [m.alloc(0) for _ in range(300)] + [m.alloc(9) for _ in range(3)] + [m.alloc(4)]
    for p in held[:300:3]:
        m.free(p, 0)
    freed = [m.alloc(9) for _ in range(4)]        # freed through the free path: the
    for p in freed:                                # hooks of every design see them
        m.free(p, 9)
    return held


def test_every_registered_reporter_is_a_launcher_design():
    assert set(REPORTING) == {n for n, d in designs.DESIGNS.items() if d.reporter}


@pytest.mark.parametrize("name", REPORTING)
def test_design_reports_only_free_blocks_of_report_order(make_machine, name):
    m = make(make_machine, name)
    fragment(m)
    free_big = set(free_blocks_at_least(m, 9))
    seen_alloc = []

    def during():
        # while the batch is out, nothing reported may be allocated, and the
        # reported blocks are free blocks of at least the report order
        for pfn, order in dev.reports[-1]:
            assert order >= 9
            assert (pfn, order) in free_big
        seen_alloc.append(m.try_alloc(0))

    dev = RecordingDevice()
    dev.on_report = during
    d = design(m, name, device=dev)
    d.start()
    d.process()
    assert dev.reports, f"{name} reported nothing"
    got = dev.ranges()
    assert len(got) == len(set(got))                # no block twice in one pass
    if name in ("mainline", "boundary", "callback", "isolate"):
        assert set(got) == free_big                 # every free block of the report order
    for p in seen_alloc:                            # allocations during reports never got
        assert p is None or all(not (q <= p < q + (1 << o)) for q, o in got)
    for p in seen_alloc:
        if p is not None:
            m.free(p, 0)
    assert invariants.check(m) == []


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

    dev = RecordingDevice(hypervisor=hv)
    dev.on_report = worker_allocates_and_writes
    design(m, "callback", device=dev, callback_mode="discard").process()
    free_blocks(m.frames, m.zs, m.mem, agent, pfns, orders, n[0], 1.0)
    assert m.zs[m.layout.wstats(agent) + WC_USE_AFTER_DISCARD] == 64


# -- concurrent runs of every design -----------------------------------------------

LINEUP = ["none", "mainline", "boundary", "callback/hint", "callback/discard", "isolate",
          "bitmap"]
LINEUP += [n for n in designs.names() if n not in {x.split("/")[0] for x in LINEUP}]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("item", LINEUP)
def test_design_under_concurrent_workers(tmp_path, item):
    name, _, mode = item.partition("/")
    out = tmp_path / "r.json"
    args = ["run", "--strategy", name, "--workload", "page_fault1", "--memory", "256M",
            "--duration", "3", "--working-set", "64M", "--json", str(out), "--quiet"]
    if name != "none":
        args += ["--delay", "0.2", "--scan-interval", "0.5"]
    if mode:
        args += ["--callback-mode", mode]
    if mode == "discard":
        args += ["--hv-latency", "0.3"]           # widen the window between walk and discard
    res = shmalloc(*args)
    assert res.returncode == 0, res.stderr
    run = results.load(str(out))["runs"][0]
    assert run["safety"]["invariant_errors"] == []
    assert run["safety"]["double_allocations"] == 0
    if mode == "discard":
        assert run["safety"]["use_after_discard"] > 0, "the race was not detected"
    else:
        assert run["safety"]["use_after_discard"] == 0
    design = designs.DESIGNS[name]
    by_caller = run["locks"][0]["by_caller"]
    if design.reporter:
        assert run["reporting"]["reports"] > 0
        assert by_caller["reporter"]["acquisitions"] > 0
    if design.host_scan:
        assert run["reporting"]["scans"] > 0 and run["reporting"]["hv_ranges"] > 0
        assert by_caller["host"]["acquisitions"] > 0


@pytest.mark.timeout(600)
def test_compare_tiny(tmp_path):
    out = tmp_path / "c.json"
    res = shmalloc("compare", "--memory", "64M", "--duration", "1", "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    doc = results.load(str(out))
    labels = [r["label"] for r in doc["runs"]]
    from launcher.compare import DEFAULT_LINEUP
    assert labels == list(DEFAULT_LINEUP)
    for label in labels:
        assert sum(line.startswith(label + " ") for line in res.stdout.splitlines()) == 2
    assert "UNSAFE" not in res.stdout or "callback/discard" in res.stdout

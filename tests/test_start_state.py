"""The model's start state (--start unreported|reported): a guest whose free
memory the reporter has still to flush, or one whose initial flush is done
(Linux's page_reporting_register requests it, "Begin initial flush of
zones") and whose reporter is idle.  Each design that records what the host
has starts in its own words: mainline's PageReported, boundary's Reported
counts, hostscan's marks; the others refuse it.  The pure-Python reference
follows it too (tests/test_model.py draws it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli import assert_usage_error, shmalloc
from reporting_helpers import design, free_blocks_at_least, reported

from launcher.experiment.designs import DESIGNS
from launcher.output import results
from shmalloc import invariants
from shmalloc.layout import (
    H_BITMAP_WORDS,
    HOOK_BOUNDARY,
    HOOK_HOSTSCAN,
    HOOK_MAINLINE,
    REPORTING_IDLE,
    REPORTING_REQUESTED,
    RS_INSTALLS,
    RS_REFCNT,
    RS_STATE,
    Z_REPORT_FLAGS,
    Z_REPORTED,
    ZRF_REQUESTED,
)
from shmalloc.machine import ConfigError, MachineConfig

pytestmark = pytest.mark.nojit


def test_mainline_starts_reported_and_idle(make_machine):
    m = make_machine(memory=64 << 20, zones=2, pcp_batch=0, strategy=HOOK_MAINLINE,
                     start_reported=True)
    assert reported(m) == [p for p, _ in free_blocks_at_least(m, 9)] != []
    d = design(m, "mainline", start_reported=True)
    d.start()
    assert m.zs[m.layout.off_report + RS_STATE] == REPORTING_IDLE and m.wake.value == 0
    assert d.process() is False
    assert d.device.reports == []                 # nothing left to report
    assert invariants.check(m) == []
    p = m.alloc(10)                               # the guest takes a reported block ...
    m.free(p, 10)                                 # ... and frees it: one request, one report
    assert m.zs[m.layout.off_report + RS_STATE] == REPORTING_REQUESTED
    d.process()
    assert d.device.ranges() == [(p, 10)]


def test_mainline_unreported_flushes_first(make_machine):
    m = make_machine(memory=64 << 20, pcp_batch=0, strategy=HOOK_MAINLINE)
    assert reported(m) == []
    d = design(m, "mainline")
    d.start()                                     # page_reporting_register's request
    assert m.zs[m.layout.off_report + RS_STATE] == REPORTING_REQUESTED and m.wake.value == 1
    passes = 1
    while d.process():                            # the flush, a budget per pass
        passes += 1
    assert passes > 1 and d.device.ranges() == free_blocks_at_least(m, 9)


def test_boundary_starts_reported_counted_and_unrequested(make_machine):
    m = make_machine(memory=64 << 20, zones=2, pcp_batch=0, strategy=HOOK_BOUNDARY,
                     start_reported=True)
    for z in range(2):
        zb = m.layout.zone(z)
        assert m.zs[zb + Z_REPORTED + 10] == 8 and not m.zs[zb + Z_REPORT_FLAGS] & ZRF_REQUESTED
    d = design(m, "boundary", start_reported=True)
    d.start()
    assert m.zs[m.layout.off_report + RS_REFCNT] == 0 and m.wake.value == 0
    assert invariants.check(m) == []
    d = design(make_machine(memory=64 << 20, pcp_batch=0, strategy=HOOK_BOUNDARY), "boundary")
    d.start()                                     # page_reporting_startup's request
    assert d.zs[d.stats + RS_REFCNT] == 1


def test_hostscan_starts_with_every_frame_reclaimed(make_machine):
    m = make_machine(memory=16 << 20, pcp_batch=0, strategy=HOOK_HOSTSCAN,
                     start_reported=True)
    words = int(m.zs[H_BITMAP_WORDS])
    bits = np.unpackbits(m.zs[m.layout.off_strat: m.layout.off_strat + words].view(np.uint8),
                         bitorder="little")
    assert bits.sum() == m.nr_pages >> 9 and bits[:8].all()
    assert invariants.check(m) == []
    m.alloc(0)                                    # a frame installed again
    assert m.zs[m.layout.off_report + RS_INSTALLS] == 1


@pytest.mark.parametrize("name", [n for n, d in DESIGNS.items() if not d.records_host])
def test_designs_without_a_record_of_the_host_refuse_a_reported_start(name):
    with pytest.raises(ConfigError, match="--start: reported needs a design that records"):
        MachineConfig(strategy=DESIGNS[name].hook, start_reported=True).validate()
    res = shmalloc("run", "--strategy", name, "--start", "reported")
    assert_usage_error(res, "--start", f"not {name}", "keeps no record of what the host has")


def test_the_reference_starts_as_the_engine(make_machine):
    """The engine's start (numpy over the frames) and the reference's (its
    lists) agree for every design that takes it; the model test draws it."""
    from test_model import Model
    for name in ("mainline", "boundary", "hostscan"):
        cfg = MachineConfig(memory=16 << 20, zones=2, workers=2, pcp_batch=0, report_order=9,
                            strategy=DESIGNS[name].hook, start_reported=True)
        model = Model(name, cfg, "head")
        try:
            model.check("start")
        finally:
            model.m.destroy()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("start", ["unreported", "reported"])
def test_a_run_records_its_start_and_a_reported_start_has_no_flush(tmp_path, start):
    """A hog that holds its memory past the end: started unreported, the
    reporter's initial flush runs a pass (after its 1 s delay) on the free
    half of the guest; started reported, nothing is freed during the run,
    and no pass runs."""
    out = tmp_path / "r.json"
    res = shmalloc("run", "--strategy", "mainline", "--start", start, "--workload", "hog",
                   "--hog-share", "0.5", "--hog-hold", "60s", "--delay", "1s", "--workers", "1",
                   "--memory", "256M", "--duration", "2.5", "--json", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    (run,) = results.load(str(out))["runs"]
    assert run["config"]["start"] == start
    if start == "reported":
        assert run["reporting"]["cycles"] == 0 and run["reporting"]["reports"] == 0
    else:
        assert run["reporting"]["cycles"] >= 1 and run["reporting"]["reports"] >= 1
    assert json.loads(out.read_text())["runs"][0]["config"]["start"] == start


def test_results_written_before_the_flags_read_as_what_they_ran(tmp_path):
    """A results file from before --host-pages and --start: its runs ran on
    4 KiB host pages, and mainline, boundary and hostscan started unreported;
    a real guest's run (system qemu) keeps its own config."""
    doc = {"format": "shmalloc-results", "version": 2, "metadata": {}, "runs": [
        {"config": {"strategy": "mainline"}}, {"config": {"strategy": "none"}},
        {"system": "qemu", "config": {"strategy": "mainline", "start": "idle"}}]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    ml, none, qemu = (r["config"] for r in results.load(str(path))["runs"])
    assert ml == {"strategy": "mainline", "host_pages": "4k", "start": "unreported"}
    assert none == {"strategy": "none", "host_pages": "4k", "start": None}
    assert qemu == {"strategy": "mainline", "start": "idle"}

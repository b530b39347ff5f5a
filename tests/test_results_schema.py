"""The results file's contract, checked once: every key docs/run.md documents
(section "Results file"), each with a value check where the value can be
derived from the rest of the file or from the machine; ``compare --repeat``
interleaving the designs in rounds; ``report`` over several files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict

import numpy
import pytest
from cli import ROOT, shmalloc

from launcher.cli.flags import run_config
from launcher.cli.main import build_parser
from launcher.experiment.metrics import GIB
from launcher.output import results
from launcher.output.report import run_label
from shmalloc.layout import REPORT_FIELDS, WORKER_COUNTERS

PAGE = 4096
MEMORY = 256 << 20
SAMPLE_S = 0.1

# docs/run.md's words, key by key
METADATA_KEYS = ["python", "numpy", "numba", "posix_ipc", "multiprocess", "cpu_model",
                 "cpu_count", "kernel", "thp_enabled", "thp_shmem_enabled", "shm_dir",
                 "mqueue_msg_max", "mqueue_msgsize_max", "git_commit", "start_method",
                 "numba_cache_warm", "huge_tmpfs_problem"]
RUN_KEYS = ["config", "outcome", "abort_reason", "stopped_at_s", "injected", "throughput",
            "latency_ns", "locks", "memory", "reporting", "refaults", "first_touches", "safety",
            "workers"]
THROUGHPUT_KEYS = ["pages_per_sec", "ops_per_sec", "elapsed_s", "per_worker"]
LATENCY_KEYS = ["p50", "p99", "p99_9", "max", "histogram"]
MEMORY_KEYS = ["guest_bytes", "host_resident_bytes_start", "host_resident_bytes_end",
               "host_resident_bytes_min", "host_resident_bytes_max", "reported_bytes",
               "discarded_bytes", "footprint_gib_s", "half_returned_s",
               "returned_share_end", "free_unreportable_bytes_end", "host_page_bytes",
               "refaulted_bytes", "host_huge_share_at_max", "timeline"]
TIMELINE_KEYS = ["t_s", "free_bytes", "host_resident_bytes", "reported_bytes",
                 "discarded_bytes", "refaults", "first_touches"]
# passes, reports, ranges, pages, re-reports, time waiting for the host, pages
# not taken, the stub's discards, hostscan's scans and installs
REPORTING_KEYS = ["cycles", "reports", "ranges_reported", "pages_reported", "re_reports",
                  "ack_wait_s", "pages_not_taken", "hv_requests", "hv_ranges",
                  "hv_pages_discarded", "scans", "installs"]
SAFETY_KEYS = ["use_after_discard", "double_allocations", "invariant_errors"]

# a hog under boundary: the hog frees after its hold, leaving more than 32
# unreported order-10 blocks (boundary's request mark), and boundary returns
# them within its 0.1 s delay and one pass; 7 s is the backstop.  The hold
# lasts 15 of the launcher's 100 ms sampling periods, so the timeline cannot
# miss the peak unless the launcher is starved for 1.5 s (it checks its
# children at the same pace, so the run would not be sound either).  The
# hog's allocations never fail, whenever boundary's first pass comes: a batch
# of CAPACITY blocks of at most 4 MiB is all a pass holds off the free lists,
# and the hog's share leaves more than that free (with 90 % and the default
# 32 blocks, a pass that overlapped a slow hog's allocation took the last
# free memory, the hog stopped short at 128 MiB and its free never reached
# the request mark)
HOG_SHARE = 0.8
HOG_HOLD_S = 1.5
CAPACITY = 8
assert (1 - HOG_SHARE) * MEMORY > CAPACITY * (4 << 20)
HOG = ["run", "--strategy", "boundary", "--workload", "hog", "--memory", "256M",
       "--capacity", str(CAPACITY),
       "--hog-share", str(HOG_SHARE), "--hog-hold", str(HOG_HOLD_S), "--duration", "7"]


def footprint(timeline: dict) -> float:
    t, r = timeline["t_s"], timeline["host_resident_bytes"]
    return sum((t[i + 1] - t[i]) * (r[i] + r[i + 1]) / 2 for i in range(len(t) - 1)) / GIB


def half_back(timeline: dict, freed_at: float, freed: int) -> float | None:
    """Seconds after ``freed_at`` until the host held ``freed / 2`` less than
    at the last sample before it (the "half back" of the tables)."""
    t, r = timeline["t_s"], timeline["host_resident_bytes"]
    at_free = [x for x, ts in zip(r, t) if ts <= freed_at][-1]
    return next((ts - freed_at for x, ts in zip(r, t)
                 if ts > freed_at and x <= at_free - freed / 2), None)


@pytest.fixture(scope="module")
def hog_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("schema") / "r.json"
    res = shmalloc(*HOG, "--json", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stdout == res.stderr == ""
    return results.load(str(out))


@pytest.mark.timeout(300)
def test_metadata(hog_doc):
    doc = hog_doc
    assert doc["format"] == "shmalloc-results" and doc["version"] == 3
    meta = doc["metadata"]
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["python"] == platform.python_version()
    assert meta["numpy"] == numpy.__version__
    assert meta["kernel"] == platform.release() and meta["cpu_count"] == os.cpu_count()
    assert meta["start_method"] == "fork" and isinstance(meta["numba_cache_warm"], bool)
    for limit in ("msg_max", "msgsize_max"):
        with open(f"/proc/sys/fs/mqueue/{limit}") as f:
            assert meta[f"mqueue_{limit}"] == f.read().strip()
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    # the commit git gives this user (none where git refuses the checkout,
    # e.g. another user's: "dubious ownership")
    assert meta["git_commit"] is None if not head else meta["git_commit"].startswith(head)


@pytest.mark.timeout(300)
def test_run_record(hog_doc):
    (run,) = hog_doc["runs"]
    assert set(RUN_KEYS) <= set(run)
    # config: every flag, as shmalloc run's parser resolves the command line
    want = asdict(run_config(build_parser().parse_args(HOG + ["--quiet"])))
    assert run["config"] == json.loads(json.dumps(want))
    cfg = run["config"]
    assert run["outcome"] == "ok" and run["abort_reason"] is None and run["injected"] == []
    assert cfg["duration"] <= run["stopped_at_s"] < cfg["duration"] + 1

    # throughput and the per-worker counters add up
    t, workers = run["throughput"], run["workers"]
    assert set(THROUGHPUT_KEYS) <= set(t)
    assert len(t["per_worker"]) == len(workers) == cfg["workers"]
    for w in workers:
        assert set(w) == set(WORKER_COUNTERS)
    assert t["pages"] == sum(w["pages_allocated"] for w in workers) == \
        sum(p["pages"] for p in t["per_worker"])
    assert t["ops"] == sum(w["ops"] for w in workers)
    assert t["pages_per_sec"] == pytest.approx(t["pages"] / t["elapsed_s"], rel=1e-3)
    assert t["ops_per_sec"] == pytest.approx(t["ops"] / t["elapsed_s"], rel=1e-3)
    hog_pages = int(HOG_SHARE * (MEMORY // PAGE)) // cfg["workers"]
    # each hog allocates its whole share (see CAPACITY)
    assert all(w["pages_allocated"] == hog_pages and w["alloc_failures"] == 0
               for w in workers)

    # latency: histograms of every call, percentiles in order
    for op in ("alloc", "free"):
        lat = run["latency_ns"][op]
        assert set(LATENCY_KEYS) <= set(lat)
        assert lat["count"] == sum(n for _, n in lat["histogram"]) > 0
        assert lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    assert run["latency_ns"]["alloc"]["count"] == sum(w["allocs"] + w["alloc_failures"]
                                                      for w in workers)

    # locks: per zone, the lock_stat values are the sums over callers
    (lock,) = run["locks"]
    assert set(lock["by_caller"]) == {"alloc", "free", "reporter", "host"}
    for key in ("acquisitions", "contentions", "con_bounces", "acq_bounces"):
        assert lock[key] == sum(c[key] for c in lock["by_caller"].values()), key
    assert lock["by_caller"]["reporter"]["acquisitions"] > 0

    # reporting: the reporter's counts and the stub's agree
    rep = run["reporting"]
    assert set(REPORTING_KEYS) <= set(rep)
    assert rep["reports"] > 0 and rep["hv_requests"] == rep["reports"]
    assert rep["hv_ranges"] == rep["ranges_reported"]
    assert rep["hv_pages_discarded"] == rep["pages_reported"]
    assert rep["re_reports"] == rep["report_errors"] == rep["hv_errors"] == 0
    assert rep["scans"] == rep["installs"] == 0                 # no host scan
    assert set(rep) <= set(REPORT_FIELDS) | {"ack_wait_s", "hv_discard_s"}

    assert run["refaults"] == 0                  # the hog wrote each page once
    assert run["safety"] == {"use_after_discard": 0, "double_allocations": 0,
                             "free_errors": 0, "invariant_errors": []}


@pytest.mark.timeout(300)
def test_memory_record(hog_doc):
    (run,) = hog_doc["runs"]
    mem, rep = run["memory"], run["reporting"]
    assert set(MEMORY_KEYS) <= set(mem)
    tl = mem["timeline"]
    assert set(TIMELINE_KEYS) <= set(tl)
    n = len(tl["t_s"])
    assert all(len(v) == n for v in tl.values())
    assert all(a < b for a, b in zip(tl["t_s"], tl["t_s"][1:]))
    # sampled every 100 ms over the run, and once more at its end
    assert run["stopped_at_s"] / SAMPLE_S <= n <= run["stopped_at_s"] / SAMPLE_S + 3
    resident = tl["host_resident_bytes"]
    assert mem["guest_bytes"] == MEMORY
    assert mem["host_resident_bytes_start"] == 0                 # a fresh guest
    assert mem["host_resident_bytes_end"] == resident[-1]
    assert mem["host_resident_bytes_min"] == min(resident)
    # the peak is the host pages of the hog's pages, all written and held:
    # nothing else writes the guest, and the hold spans many samples (see
    # HOG_HOLD_S); with 4 KiB host pages exactly the hog's pages
    host_page = mem["host_page_bytes"]
    assert host_page == {"4k": PAGE, "2m": 512 * PAGE}[run["config"]["host_pages"]]
    assert mem["host_resident_bytes_max"] == max(resident) == run["first_touches"] * host_page
    assert run["first_touches"] * host_page >= run["throughput"]["pages"] * PAGE
    if host_page == PAGE:
        assert run["first_touches"] == run["throughput"]["pages"]
    assert tl["first_touches"][-1] == run["first_touches"]
    assert tl["refaults"][-1] == run["refaults"] == mem["refaulted_bytes"] // host_page
    assert mem["reported_bytes"] == rep["pages_reported"] * PAGE == tl["reported_bytes"][-1]
    assert mem["discarded_bytes"] == rep["hv_pages_discarded"] * PAGE == \
        tl["discarded_bytes"][-1]
    assert mem["footprint_gib_s"] == pytest.approx(footprint(tl), abs=1e-4)
    # everything was freed and merged back into blocks boundary reports
    assert mem["free_bytes_end"] == MEMORY and mem["free_unreportable_bytes_end"] == 0
    assert mem["released_bytes"] == run["throughput"]["pages"] * PAGE
    assert 0 < mem["freeing_at_s"] <= mem["freed_at_s"]      # the free began, then ended
    half = half_back(tl, mem["freed_at_s"], mem["released_bytes"])
    assert half is not None and mem["half_returned_s"] == pytest.approx(half, abs=1e-3)
    assert mem["half_returned_s"] < 1.0          # boundary: a 0.1 s delay, one pass
    # and how much of it was back by the end: what came off the host since the shrink
    before = [x for x, t in zip(tl["host_resident_bytes"], tl["t_s"]) if t <= mem["freed_at_s"]]
    assert mem["returned_share_end"] == pytest.approx(
        (before[-1] - resident[-1]) / mem["released_bytes"], abs=1e-3)
    assert mem["returned_share_end"] > 0.5


@pytest.mark.timeout(300)
def test_compare_repeat_interleaves_and_report_reads_several_files(tmp_path):
    out = tmp_path / "c.json"
    res = shmalloc("compare", "--strategies", "none,mainline", "--repeat", "2",
                   "--memory", "64M", "--duration", "0.5", "--json", str(out))
    assert res.returncode == 0, res.stderr
    doc = results.load(str(out))
    runs = doc["runs"]
    # the designs take turns, a round each (in the round's random order),
    # and the file keeps the order they ran in
    assert [r["round"] for r in runs] == [1, 1, 2, 2]
    assert all({r["label"] for r in runs if r["round"] == k} == {"none", "mainline"}
               for k in (1, 2))
    starts = [min(w["t_start"] for w in r["workers"]) for r in runs]
    assert starts == sorted(starts)
    assert "zone locks, workers / reporter (median over rounds)" in res.stdout
    # report, given the same runs in two files (none's, then mainline's),
    # prints each run and then the same side-by-side tables
    halves, order = [], []
    for i, label in enumerate(("none", "mainline")):
        part = [r for r in runs if r["label"] == label]
        order += part
        path = tmp_path / f"{i}.json"
        results.write(str(path), results.document(part, doc["metadata"]))
        halves.append(str(path))
    rep = shmalloc("report", *halves)
    assert rep.returncode == 0 and rep.stderr == "", rep.stderr
    lines = rep.stdout.splitlines()
    heads = [line for line in lines if line.startswith("shmalloc run: ")]
    assert [h.split("strategy ")[1].split(",")[0] for h in heads] == \
        [run_label(r) for r in order]
    out = res.stdout.splitlines()
    first = out.index("zone locks, workers / reporter (median over rounds)")
    last = next(i for i, line in enumerate(out) if line.startswith(("+-2 %", "fixed cost")))
    table = out[first:last]
    while table and not table[-1]:
        table.pop()
    start = lines.index(table[0])
    assert lines[start:start + len(table)] == table

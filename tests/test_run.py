"""``shmalloc run`` end to end: workloads, results file, faults, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from cli import (
    assert_usage_error,
    attach_running,
    end,
    kill_outside_the_allocator,
    shmalloc,
    start_shmalloc,
)
from conftest import ipc_objects

from launcher.output import results
from shmalloc.layout import AG_PID, Z_LOCK_PID

RUN_KEYS = ["config", "outcome", "abort_reason", "throughput", "latency_ns", "locks", "memory",
            "refaults", "safety"]


def load_run(path):
    doc = results.load(str(path))
    assert doc["format"] == "shmalloc-results" and doc["version"] == 3
    for key in ("python", "numpy", "numba", "posix_ipc", "multiprocess", "cpu_model", "cpu_count",
                "kernel", "thp_shmem_enabled", "git_commit", "start_method", "numba_cache_warm"):
        assert key in doc["metadata"], key
    assert len(doc["runs"]) == 1
    return doc["runs"][0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workload", ["page_fault1", "thp", "random", "hog"])
def test_workload_end_to_end(tmp_path, workload):
    out = tmp_path / "r.json"
    res = shmalloc("run", "--workload", workload, "--workers", "2", "--duration", "1",
                   "--memory", "256M", "--hog-hold", "0.2", "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "allocator structure  consistent (free lists, counts and owners" in res.stdout
    # the memory summary says what each figure counts, so free and resident agree
    assert "a page never touched is free but was never resident" in res.stdout
    assert "on the guest's free lists: what the workers gave back and what they never " \
        "touched" in res.stdout
    if workload == "hog":                   # no design: nothing ever comes back
        assert "half of it back on the host: never (0 % back by the end)" in res.stdout
    run = load_run(out)
    for key in RUN_KEYS:
        assert key in run, key
    assert run["outcome"] == "ok" and run["abort_reason"] is None
    cfg = run["config"]
    assert cfg["strategy"] == "none" and cfg["workload"] == workload and cfg["workers"] == 2
    assert run["throughput"]["pages_per_sec"] > 0 and run["throughput"]["elapsed_s"] > 0.5
    assert len(run["throughput"]["per_worker"]) == 2
    assert run["latency_ns"]["alloc"]["p99"] > 0
    lock = run["locks"][0]
    for key in ("name", "acquisitions", "contentions", "waittime_total_us", "waittime_max_us",
                "holdtime_total_us", "holdtime_max_us", "by_caller"):
        assert key in lock, key
    assert lock["acquisitions"] > 0
    mem = run["memory"]
    assert mem["guest_bytes"] == 256 << 20
    assert mem["host_resident_bytes_end"] > 0          # the workers wrote their pages
    assert len(mem["timeline"]["t_s"]) >= 5
    assert run["safety"] == {"use_after_discard": 0, "double_allocations": 0, "free_errors": 0,
                             "invariant_errors": []}
    assert run["refaults"] == 0                        # nothing discards without a design


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workload", ["random", "hog", "phased"])
def test_ops_budget_ends_the_run(tmp_path, workload):
    """Every workload ends on its budget, without a --duration: the run ends
    when its workers have (the hog once it has freed what it allocated)."""
    out = tmp_path / "r.json"
    ops = 20000 if workload != "hog" else 500
    proc = start_shmalloc("run", "--workload", workload, "--ops", str(ops), "--memory", "64M",
                          "--hog-hold", "0.1", "--json", str(out), "--quiet")
    try:
        stdout, stderr = proc.communicate(timeout=120)     # the backstop: it never ended
    except subprocess.TimeoutExpired:
        end(proc)
        pytest.fail(f"shmalloc run --workload {workload} --ops {ops} did not end in 120 s")
    assert proc.returncode == 0, stderr
    assert stdout == "" and stderr == ""
    run = load_run(out)
    assert run["outcome"] == "ok" and run["safety"]["invariant_errors"] == []
    for w in run["workers"]:
        # the budget was spent, then the worker gave back what it still held
        assert w["ops"] >= ops
        assert w["allocs"] == w["frees"]
        assert w["ops"] == w["allocs"] + w["frees"] + w["alloc_failures"]
        if workload == "hog":                   # its share is larger than the budget
            assert w["allocs"] == ops and w["released_pages"] == ops


@pytest.mark.timeout(300)
def test_json_refuses_to_overwrite(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("{}")
    res = shmalloc("run", "--duration", "1", "--json", str(out))
    assert_usage_error(res, "exists", "--force")
    assert out.read_text() == "{}"
    res = shmalloc("run", "--duration", "0.5", "--memory", "64M", "--json", str(out), "--force",
                   "--quiet")
    assert res.returncode == 0, res.stderr
    assert load_run(out)["outcome"] == "ok"


def _wait_exit(proc, timeout):
    try:
        out, err = proc.communicate(timeout=timeout)
    except Exception:
        end(proc)
        raise
    return proc.returncode, out, err


@pytest.mark.timeout(300)
def test_killed_worker_stops_the_run(tmp_path):
    before = ipc_objects()
    out = tmp_path / "r.json"
    proc = start_shmalloc("run", "--duration", "60", "--memory", "256M", "--json", str(out))
    try:
        m = attach_running(proc)
        victim = int(m.zs[m.layout.agent(1) + AG_PID])
        kill_outside_the_allocator(m, victim)
        m.close()
        t0 = time.monotonic()
        code, stdout, stderr = _wait_exit(proc, 30)
        assert time.monotonic() - t0 < 5 + 5           # noticed within 5 s, cleaned up
    finally:
        end(proc)
    assert code == 3, stderr
    assert f"worker 1 (pid {victim}) was killed by signal 9 (SIGKILL)" in stderr
    assert "Traceback" not in stderr
    run = load_run(out)
    assert run["outcome"] == "aborted" and f"pid {victim}" in run["abort_reason"]
    rows = {r["where"]: r["pages"] for r in run["page_accounting"]}
    assert rows["unaccounted"] == 0
    assert sum(rows.values()) == (256 << 20) // 4096
    assert ipc_objects() == before


@pytest.mark.timeout(300)
def test_worker_stopped_holding_the_zone_lock(tmp_path):
    before = ipc_objects()
    proc = start_shmalloc("run", "--duration", "120", "--memory", "256M", "--pcp-batch", "0",
                          "--stall-timeout", "1")
    stopped = None
    try:
        m = attach_running(proc)
        workers = {int(m.zs[m.layout.agent(a) + AG_PID]) for a in range(2)}
        deadline = time.monotonic() + 60
        while stopped is None:
            assert time.monotonic() < deadline, "never caught a worker holding the lock"
            holder = int(m.zs[m.layout.zone(0) + Z_LOCK_PID])
            if holder not in workers:
                continue
            os.kill(holder, signal.SIGSTOP)
            time.sleep(0.01)                           # let the stop land
            if int(m.zs[m.layout.zone(0) + Z_LOCK_PID]) == holder:
                stopped = holder                       # stopped inside the critical section
            else:
                os.kill(holder, signal.SIGCONT)
        m.close()
        code, stdout, stderr = _wait_exit(proc, 30)
    finally:
        end(proc)
    assert code == 3, stderr
    assert "zone 0 lock held for" in stderr
    assert "by worker" in stderr and f"(pid {stopped}, stopped)" in stderr
    assert "--stall-timeout 1 s" in stderr
    assert ipc_objects() == before


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_cleans_up(sig):
    before = ipc_objects()
    proc = start_shmalloc("run", "--duration", "120", "--memory", "64M")
    try:
        attach_running(proc).close()
        proc.send_signal(sig)
        code, stdout, stderr = _wait_exit(proc, 30)
    finally:
        end(proc)
    assert code == 128 + sig
    assert f"interrupted by {signal.Signals(sig).name}" in stderr
    assert ipc_objects() == before

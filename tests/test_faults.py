"""Injected faults: every one stops the run in bounded time, names the
process and the fault, exits 3, removes every IPC object, and accounts for
every page."""

from __future__ import annotations

import os
import signal

import pytest
from cli import attach_running, end, run_objects_gone, shmalloc, start_shmalloc
from conftest import ipc_objects

from launcher.output import results
from shmalloc import shm

PAGES = (256 << 20) // 4096
STALL_S = 2.0                   # --stall-timeout of these runs
SAMPLE_S = 0.1                  # the watchdog notices a death within one sample
BACKSTOP = 10                   # bounds are 10x the promise: a backstop, not a window

FAULTS = [
    # fault, strategy, message, kind of promise, more flags
    ("kill-worker:1@1", "mainline", r"worker 1 \(pid \d+\) was killed by signal 9", "death", []),
    ("stop-worker@1", "none", r"zone 0 lock held for (?P<s>[\d.]+) s by worker 0 \(pid \d+, "
     r"stopped\)|worker 0 \(pid \d+\) has been stopped for (?P<s2>[\d.]+) s", "stall", []),
    ("kill-reporter@1", "mainline", r"reporter \(pid \d+\) was killed by signal 9", "death",
     ["--hv-latency", "1"]),
    ("kill-hypervisor@1", "mainline", r"hypervisor stub \(pid \d+\) was killed by signal 9",
     "death", []),
    ("slow-hypervisor@1", "mainline", r"hypervisor stub \(pid \d+\) has not acknowledged a "
     r"report for (?P<s>[\d.]+) s", "stall", []),
    ("kill-reporter@1", "isolate", r"reporter \(pid \d+\) was killed by signal 9", "death",
     ["--hv-latency", "1"]),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault,strategy,message,promise,extra", FAULTS,
                         ids=[f"{f[0]}-{f[1]}" for f in FAULTS])
def test_injected_fault(tmp_path, fault, strategy, message, promise, extra):
    """The watchdog keeps its promise, measured in the times the launcher
    reports (when the fault fired, when the run was stopped, how long a
    stall had lasted), not in wall time around a loaded subprocess: a death
    is noticed within one sample, a stall once it has lasted
    --stall-timeout."""
    import re
    before = ipc_objects()
    out = tmp_path / "r.json"
    proc = start_shmalloc("run", "--strategy", strategy, "--memory", "256M", "--duration", "60",
                          "--delay", "0.2", "--stall-timeout", f"{STALL_S:g}", "--pcp-batch", "0",
                          "--inject", fault, "--json", str(out), *extra)
    try:
        m = attach_running(proc)
        run_id = m.run_id
        m.close()
        _, err = proc.communicate(timeout=120)
    finally:
        end(proc)
    assert proc.returncode == 3, err
    found = re.search(message, err)
    assert found, err
    kind = fault.split(":")[0].split("@")[0]
    assert f"[injected: {kind}" in err
    assert "Traceback" not in err
    run = results.load(str(out))["runs"][0]
    assert run["outcome"] == "aborted"
    (injected,) = run["injected"]
    worker_default = kind.endswith("-worker") and ":" not in fault
    assert injected["fault"] == (fault.replace("@", ":0@") if worker_default else fault)
    fired = injected["fired_at_s"]
    assert fired is not None and fired >= 1
    if promise == "death":
        assert run["stopped_at_s"] - fired <= BACKSTOP * SAMPLE_S
    else:
        lasted = float(found["s"] or found["s2"])
        assert STALL_S <= lasted <= STALL_S + BACKSTOP * SAMPLE_S
    rows = {r["where"]: r["pages"] for r in run["page_accounting"]}
    assert rows["unaccounted"] == 0 and sum(rows.values()) == PAGES
    if kind == "kill-reporter":
        # the injector waits up to 5 s for a batch to be out; whether it
        # caught one, the accounting says the same (tests/test_run_reporting.py
        # kills the reporter once a batch is out, always)
        kept = sum(n for w, n in rows.items() if w.startswith("in-flight batch") or
                   w == "free (isolate)")
        assert (kept > 0) == injected["note"].endswith(", with a batch out"), (rows, injected)
    assert ipc_objects() == before and run_objects_gone(run_id)


BAD_FAULTS = [
    (["--inject", "explode@1"], "WHAT@SECONDS"),
    (["--inject", "kill-worker"], "WHAT@SECONDS"),
    (["--inject", "kill-worker@soon"], "not a number"),
    (["--inject", "kill-worker:5@1"], "only 2 workers"),
    (["--inject", "kill-reporter@1"], "runs no reporter"),
    (["--inject", "kill-worker@9", "--duration", "5"], "later than the end"),
]


@pytest.mark.parametrize("argv", BAD_FAULTS, ids=lambda a: " ".join(a[0]))
def test_bad_inject(argv):
    from cli import assert_usage_error
    before = ipc_objects()
    assert_usage_error(shmalloc("run", *argv[0]), "--inject", argv[1])
    assert ipc_objects() == before


@pytest.mark.timeout(300)
def test_cleanup_after_a_killed_launcher_spares_a_live_run(tmp_path):
    before = ipc_objects()
    victim = start_shmalloc("run", "--strategy", "mainline", "--memory", "128M",
                            "--duration", "120")
    survivor = None
    try:
        m = attach_running(victim)
        dead_run = m.run_id
        m.close()
        os.kill(victim.pid, signal.SIGKILL)        # no chance to clean up
        victim.communicate(timeout=30)
        assert not shm.run_creator_alive(shm.list_runs()[dead_run])
        left = shm.list_runs()[dead_run].names
        assert left                                # it did leave objects behind
        survivor = start_shmalloc("run", "--strategy", "mainline", "--memory", "128M",
                                  "--duration", "4", "--quiet")
        live = attach_running(survivor)
        live_run = live.run_id
        live.close()
        res = shmalloc("cleanup")
        assert res.returncode == 0, res.stderr
        for name in left:
            assert f"removed {name}" in res.stdout
        assert live_run in res.stdout.splitlines()[-1]   # left alone
        _, err = survivor.communicate(timeout=120)
        assert survivor.returncode == 0, err
        assert run_objects_gone(dead_run) and run_objects_gone(live_run)
    finally:
        end(victim)
        end(survivor)
    assert ipc_objects() == before


@pytest.mark.timeout(300)
def test_two_runs_at_once_use_their_own_objects(tmp_path):
    procs = [start_shmalloc("run", "--memory", "64M", "--duration", "2", "--quiet",
                            "--json", str(tmp_path / f"{i}.json")) for i in range(2)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=200)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            end(p)
    a, b = (results.load(str(tmp_path / f"{i}.json"))["runs"][0] for i in range(2))
    assert a["safety"]["invariant_errors"] == [] == b["safety"]["invariant_errors"]

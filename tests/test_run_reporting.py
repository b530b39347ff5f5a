"""Runs with a reporting design: processes, the stub, faults."""

from __future__ import annotations

import os
import signal
import time

import pytest
from cli import (
    attach_running,
    end,
    kill_outside_the_allocator,
    run_objects_gone,
    start_shmalloc,
)
from conftest import ipc_objects
from runs import all_freed, host_gave_back, run_until

from launcher.output import results
from shmalloc.layout import AG_PID, PS_INFLIGHT


def load(path):
    return results.load(str(path))["runs"][0]



@pytest.mark.timeout(300)
def test_mainline_gives_freed_memory_back():
    """The hog frees; the run lasts until the host holds less than a quarter
    of what it held (not a fixed window the hog and a pass must fit in).
    The hog takes 80 % of the guest and a pass holds at most 8 blocks of 4
    MiB off the free lists, so a pass that comes while a slow hog still
    allocates never takes the memory the hog needs."""
    run = run_until(lambda r: all_freed(r) and host_gave_back(r, 0.25), strategy="mainline",
                    workload="hog", memory=256 << 20, delay=0.5, hog_hold=0.5,
                    hog_share=0.8, capacity=8)
    assert run["safety"]["use_after_discard"] == 0 and run["safety"]["invariant_errors"] == []
    assert all(w["alloc_failures"] == 0 for w in run["workers"])
    mem, rep = run["memory"], run["reporting"]
    assert mem["host_resident_bytes_max"] > 200 << 20          # the hog wrote 204.8 MiB
    assert mem["host_resident_bytes_end"] < mem["host_resident_bytes_max"] / 4
    assert mem["half_returned_s"] is not None
    assert rep["reports"] > 0 and rep["hv_requests"] == rep["reports"]
    assert mem["discarded_bytes"] == mem["reported_bytes"] > 0
    assert run["locks"][0]["by_caller"]["reporter"]["acquisitions"] > 0


def _run_id_of(proc):
    from shmalloc import shm
    return next(r.run_id for r in shm.list_runs().values() if r.pid == proc.pid)


@pytest.mark.timeout(300)
def test_stub_killed_mid_run(tmp_path):
    before = ipc_objects()
    out = tmp_path / "r.json"
    proc = start_shmalloc("run", "--strategy", "mainline", "--duration", "60", "--memory",
                          "256M", "--json", str(out))
    try:
        m = attach_running(proc)
        run_id = m.run_id
        stub = int(m.zs[m.layout.agent(m.hypervisor_agent) + AG_PID])
        m.close()
        os.kill(stub, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        end(proc)
    assert proc.returncode == 3, err
    assert f"hypervisor stub (pid {stub}) was killed by signal 9 (SIGKILL)" in err
    rows = {r["where"]: r["pages"] for r in load(out)["page_accounting"]}
    assert rows["unaccounted"] == 0 and sum(rows.values()) == (256 << 20) // 4096
    assert ipc_objects() == before and run_objects_gone(run_id)


@pytest.mark.timeout(300)
def test_reporter_killed_mid_cycle(tmp_path):
    """Killed while its batch is with the hypervisor: the batch's pages are
    found in the final accounting."""
    before = ipc_objects()
    out = tmp_path / "r.json"
    proc = start_shmalloc("run", "--strategy", "mainline", "--duration", "60", "--memory",
                          "256M", "--delay", "0", "--hv-latency", "5", "--json", str(out))
    try:
        m = attach_running(proc)
        run_id = m.run_id
        reporter = int(m.zs[m.layout.agent(m.reporter_agent) + AG_PID])
        deadline = time.monotonic() + 60
        while not (m.frames["state"] == PS_INFLIGHT).any():
            assert time.monotonic() < deadline, "the reporter never filled a batch"
            time.sleep(0.01)
        kill_outside_the_allocator(m, reporter)     # waiting for the host, batch out
        m.close()
        _, err = proc.communicate(timeout=30)
    finally:
        end(proc)
    assert proc.returncode == 3, err
    assert f"reporter (pid {reporter}) was killed by signal 9 (SIGKILL)" in err
    rows = {r["where"]: r["pages"] for r in load(out)["page_accounting"]}
    inflight = [n for w, n in rows.items() if w.startswith("in-flight batch")]
    assert inflight and inflight[0] > 0
    assert rows["unaccounted"] == 0 and sum(rows.values()) == (256 << 20) // 4096
    assert ipc_objects() == before and run_objects_gone(run_id)

"""A run with a reporter removes its message queues on every exit path
(normal end, SIGINT, SIGTERM, an abort: a worker died), and a SIGKILLed launcher's
children die with it and ``shmalloc cleanup`` removes what it left.

Queues are checked by name (tests/leaks.py), so these tests hold whether
or not /dev/mqueue is mounted."""

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
    shmalloc,
    start_shmalloc,
)
from leaks import ShmCreations, queues_by_name, run_id_of

from launcher.experiment.proc import process_state
from launcher.output import results
from shmalloc import shm, virtqueue
from shmalloc.layout import AG_PID

RUN = ["run", "--strategy", "mainline", "--memory", "64M", "--delay", "0.2"]


def both_queues(run_id: str) -> set[str]:
    return set(virtqueue.queue_names(run_id))


@pytest.mark.timeout(300)
def test_normal_end_removes_the_queues(tmp_path):
    watch = ShmCreations()
    try:
        out = tmp_path / "r.json"
        res = shmalloc(*RUN, "--duration", "1", "--json", str(out))
        run_ids = {r for r in map(run_id_of, watch.poll()) if r}
    finally:
        watch.close()
    assert res.returncode == 0, res.stderr
    assert results.load(str(out))["runs"][0]["outcome"] == "ok"
    assert "reporting (mainline)" in res.stdout and "hypervisor stub" in res.stdout
    assert len(run_ids) == 1
    assert queues_by_name(run_ids) == set()
    assert run_objects_gone(run_ids.pop())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "dead worker"])
def test_interrupted_or_aborted_run_removes_the_queues(tmp_path, how):
    out = tmp_path / "r.json"
    proc = start_shmalloc(*RUN, "--duration", "120", "--quiet", "--json", str(out))
    try:
        m = attach_running(proc)
        run_id = m.run_id
        assert queues_by_name({run_id}) == both_queues(run_id)     # they were there
        if how.startswith("SIG"):
            proc.send_signal(signal.Signals[how])
        else:                                     # the watchdog's abort (exit status 3)
            kill_outside_the_allocator(m, int(m.zs[m.layout.agent(0) + AG_PID]))
        m.close()
        _, err = proc.communicate(timeout=120)
    finally:
        end(proc)
    want = 128 + signal.Signals[how] if how.startswith("SIG") else 3
    assert proc.returncode == want, err
    assert results.load(str(out))["runs"][0]["outcome"] == "aborted"
    assert queues_by_name({run_id}) == set()
    assert run_objects_gone(run_id)


@pytest.mark.timeout(300)
def test_killed_launcher_children_die_and_cleanup_removes_the_queues():
    proc = start_shmalloc(*RUN, "--duration", "120", "--quiet")
    try:
        m = attach_running(proc)
        run_id = m.run_id
        children = {int(m.zs[m.layout.agent(a) + AG_PID])
                    for a in (0, 1, m.reporter_agent, m.hypervisor_agent)}
        m.close()
        assert len(children) == 4 and all(process_state(p) != "gone" for p in children)
        os.kill(proc.pid, signal.SIGKILL)           # no chance to clean up
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 30
        while any(process_state(p) not in ("gone", "a zombie") for p in children):
            assert time.monotonic() < deadline, \
                f"children outlived the launcher: {[process_state(p) for p in children]}"
            time.sleep(0.05)
    finally:
        end(proc)
    assert queues_by_name({run_id}) == both_queues(run_id)     # left behind
    assert not shm.run_creator_alive(shm.list_runs()[run_id])
    res = shmalloc("cleanup")
    assert res.returncode == 0, res.stderr
    for name in both_queues(run_id):
        assert f"removed {name}" in res.stdout.splitlines()
    assert queues_by_name({run_id}) == set()
    assert run_objects_gone(run_id)

"""Run the ``shmalloc`` command as users do: ``python -m launcher``."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shmalloc(*args: str, timeout: float = 300, env: dict | None = None, **kw):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=full_env, **kw)


def assert_usage_error(res, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, nothing on stdout."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def start_shmalloc(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "launcher", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=full_env)


def attach_running(proc: subprocess.Popen, timeout: float = 180.0):
    """Attach to the machine of a running ``shmalloc run`` once its workers
    have started (the start flag is set).  The caller closes it."""
    import time

    from shmalloc import shm
    from shmalloc.layout import H_GO
    from shmalloc.machine import Machine

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"shmalloc exited early: {proc.communicate()}"
        runs = [r for r in shm.list_runs().values() if r.pid == proc.pid]
        if runs and len(runs[0].shm) == 3:
            try:
                m = Machine.attach(runs[0].run_id)
            except shm.IPCError:
                time.sleep(0.05)
                continue
            while m.zs[H_GO] == 0:
                assert time.monotonic() < deadline, "workers never started"
                assert proc.poll() is None, f"shmalloc exited early: {proc.communicate()}"
                time.sleep(0.01)
            return m
        time.sleep(0.05)
    raise AssertionError("no machine of that shmalloc run appeared")


def kill_outside_the_allocator(m, pid: int) -> None:
    """SIGKILL ``pid`` at a moment it holds no zone lock: stop it, look, and
    kill it only if it is not inside a zone's critical section (a process
    killed in there leaves that zone's lists half updated, which the run
    then reports; the tests that want a clean accounting avoid it)."""
    import signal
    import time

    from launcher.experiment.proc import process_state
    from shmalloc.layout import Z_LOCK_PID

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGSTOP)
        while process_state(pid) not in ("stopped", "gone"):
            time.sleep(0.0005)
        if all(int(m.zs[m.layout.zone(z) + Z_LOCK_PID]) != pid for z in range(m.nr_zones)):
            os.kill(pid, signal.SIGKILL)
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.001)
    raise AssertionError(f"pid {pid} never left the allocator")


def run_objects_gone(run_id: str) -> bool:
    """No shared memory, semaphore or message queue of ``run_id`` is left
    (queues are checked by name: /dev/mqueue need not be mounted)."""
    import posix_ipc

    from shmalloc import shm, virtqueue

    for name in virtqueue.queue_names(run_id):
        try:
            posix_ipc.MessageQueue(name).close()
            return False
        except posix_ipc.ExistentialError:
            pass
    return not any(r.run_id == run_id for r in shm.list_runs().values())


def end(proc: subprocess.Popen) -> None:
    """Make sure a started ``shmalloc`` is gone: SIGTERM first, so that it
    removes its objects, SIGKILL if it does not."""
    import signal
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
